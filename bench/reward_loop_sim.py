"""How often tests/test_reward_loop.py fails by chance, simulated from observed per-prompt rates.

Input: a JSON file of per-prompt counts measured through the real stack with a reward model the
test's own way trained (bench/results/reward_loop_rates.json: for each fresh prompt, how many of
its plain answers and of its best_of=4 answers had the users' trait), and the held-out pairs the
test's runs scored. Each simulated run draws every prompt's rates from their Beta posteriors
(the prior fitted to all prompts' rates, each prompt's few samples updating it: the estimates'
own uncertainty), then the test's samples (one best_of=4 answer and --plain plain answers per
prompt), and applies the test's marks: best_of's rate above the plain one and the one-sided
per-prompt exact test (the test's per_prompt_exact_greater) below 1e-3; `--statistic fisher`
applies the pooled Fisher test the test used before, for comparison. `--best-shift` lowers
every prompt's best_of log-odds (a weaker reward model than the measured one); `--null` draws
best_of's answers at each prompt's plain rate (a reward model that learned nothing: the marks
must then be met less than once in a thousand runs). The held-out accuracy mark (>= 0.85) is
computed from the posterior of the per-pair error rate.

    .venv/bin/python bench/reward_loop_sim.py bench/results/reward_loop_rates.json
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
from scipy.stats import betabinom, binom, fisher_exact

P_MARK = 1e-3


def fisher_fails(best: np.ndarray, plain: np.ndarray, plain_per_prompt: int) -> np.ndarray:
    """Per run (rows of per-prompt hits): True where the pooled Fisher marks are missed."""
    n_best, n_plain = best.shape[1], plain_per_prompt * best.shape[1]
    totals = np.stack([best.sum(1), plain.sum(1)], 1)
    pairs, inverse = np.unique(totals, axis=0, return_inverse=True)
    missed = np.array(
        [
            not (
                b * n_plain > p * n_best
                and fisher_exact([[b, n_best - b], [p, n_plain - p]], alternative="greater")[1]
                < P_MARK
            )
            for b, p in pairs
        ]
    )
    return missed[inverse.ravel()]


def per_prompt_p(prompts_by_total: np.ndarray, best_hits: int, plain_per_prompt: int) -> float:
    """The test's per-prompt exact p-value for one best_of answer and `plain_per_prompt` plain
    ones per prompt: prompts_by_total[t - 1] prompts held t hits in all (t = 1 .. plain; the
    others carry no evidence), `best_hits` of them best_of's. Given t, best_of's answer holds
    a hit with chance t / (plain + 1)."""
    null = np.array([1.0])
    for t, count in enumerate(prompts_by_total, start=1):
        null = np.convolve(null, binom.pmf(np.arange(count + 1), count, t / (plain_per_prompt + 1)))
    return float(null[best_hits:].sum())


def per_prompt_fails(best: np.ndarray, plain: np.ndarray, plain_per_prompt: int) -> np.ndarray:
    """Per run (rows of per-prompt hits): True where the test's marks are missed."""
    together = best + plain
    informative = (together >= 1) & (together <= plain_per_prompt)
    keys = np.concatenate(
        [
            np.stack([(together == t).sum(1) for t in range(1, plain_per_prompt + 1)], 1),
            (best * informative).sum(1)[:, None],
        ],
        1,
    )
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    p = np.array([per_prompt_p(k[:-1], int(k[-1]), plain_per_prompt) for k in unique])
    rate_above = best.sum(1) * plain_per_prompt > plain.sum(1)
    return ~(rate_above & (p[inverse.ravel()] < P_MARK))


def beta_prior(hits: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """The Beta distribution of the rate across prompts (a beta-binomial fitted by moments):
    the prior each prompt's own few samples update (empirical Bayes)."""
    rates = hits / n
    mean = float(rates.mean())
    # Observed variance = between-prompt variance + binomial noise of each estimate.
    between = max(float(rates.var()) - float(np.mean(mean * (1 - mean) / n)), 1e-6)
    strength = max(mean * (1 - mean) / between - 1, 0.5)
    return mean * strength, (1 - mean) * strength


def posterior_draws(rng: np.random.Generator, hits: np.ndarray, n: np.ndarray, runs: int) -> Any:
    """Per run and prompt, a rate drawn from that prompt's posterior."""
    a, b = beta_prior(hits, n)
    return rng.beta(a + hits, b + n - hits, size=(runs, len(hits)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rates", help="JSON: prompts [{plain: [hits, n], best: [...]}], held_out")
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--plain", type=int, default=2, help="plain answers per prompt")
    parser.add_argument("--best-shift", type=float, default=0.0, help="log-odds taken off best_of")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--statistic", choices=["per-prompt", "fisher"], default="per-prompt")
    parser.add_argument("--null", action="store_true", help="best_of at the plain rates")
    args = parser.parse_args()
    data = json.loads(open(args.rates).read())
    rng = np.random.default_rng(args.seed)
    prompts = data["prompts"]
    plain_hits = np.array([p["plain"][0] for p in prompts])
    plain_n = np.array([p["plain"][1] for p in prompts])
    best_hits = np.array([p["best"][0] for p in prompts])
    best_n = np.array([p["best"][1] for p in prompts])
    runs, m = args.runs, len(prompts)
    p = posterior_draws(rng, plain_hits, plain_n, runs)
    q = posterior_draws(rng, best_hits, best_n, runs)
    if args.best_shift:
        q = 1 / (1 + np.exp(-(np.log(q / (1 - q)) - args.best_shift)))
    if args.null:
        q = p
    best = (rng.random((runs, m)) < q).astype(int)
    plain = rng.binomial(args.plain, p)
    missed = per_prompt_fails if args.statistic == "per-prompt" else fisher_fails
    fails = missed(best, plain, args.plain).mean()
    # Held-out accuracy >= 0.85: errors among `pairs` held-out pairs, the error rate's
    # posterior from every held-out pair the runs scored (Jeffreys prior).
    errors, scored = data["held_out"]["errors"], data["held_out"]["pairs"]
    size = data["held_out"]["per_run"]
    allowed = math.floor(size * 0.15 + 1e-9)
    held_out_fail = betabinom.sf(allowed, size, errors + 0.5, scored - errors + 0.5)
    print(
        json.dumps(
            {
                "prompts": m,
                "plain_per_prompt": args.plain,
                "plain_rate": round(float(p.mean()), 4),
                "best_of_rate": round(float(q.mean()), 4),
                "best_shift": args.best_shift,
                "null": args.null,
                "statistic": args.statistic,
                "runs": runs,
                "p_mark_missed": float(fails),
                "held_out_pairs_per_run": size,
                "held_out_mark_missed": float(held_out_fail),
                "either_missed": float(1 - (1 - fails) * (1 - held_out_fail)),
            }
        )
    )


if __name__ == "__main__":
    main()
