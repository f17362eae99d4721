"""Writes the table of (b)/(a) ratios from `vllm bench serve` results saved by
bench/vllm_vs_parlance.sh: (a) `vllm serve` directly, (b) the whole Parlance path.

    python3 bench/summarize_vllm.py --result-dir DIR --out bench/results/vllm_vs_parlance.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_RUN = re.compile(r"^(a|b)_c(\d+)\.json$")


def load(result_dir: Path) -> dict[int, dict[str, dict]]:
    runs: dict[int, dict[str, dict]] = {}
    for path in sorted(result_dir.iterdir()):
        match = _RUN.match(path.name)
        if match:
            runs.setdefault(int(match.group(2)), {})[match.group(1)] = json.loads(path.read_text())
    return runs


def _ratio(b: float | None, a: float | None) -> str:
    if not a or b is None:
        return "n/a"
    return f"{b / a:.2f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render(result_dir: Path) -> str:
    runs = load(result_dir)
    card_file = result_dir / "card.txt"
    card = card_file.read_text().strip() if card_file.exists() else "unknown card"
    redis_file = result_dir / "redis.txt"
    redis = redis_file.read_text().strip() if redis_file.exists() else "unknown"
    lines = [
        "# Parlance vs `vllm serve`: same model, same GPU, one run",
        "",
        f"Card: **{card}**. Model: SmolLM2-135M-Instruct (bf16), max_model_len 2048, "
        "gpu_memory_utilization 0.5 on both sides.",
        "",
        "(a) `vllm serve` directly. (b) gateway -> safety (input moderation, profanity backend) "
        f"-> generator (vLLM AsyncLLM in-process), Redis rate limits on ({redis}), history off.",
        "Load: `vllm bench serve --backend openai-chat --dataset-name random "
        "--random-input-len 256 --random-output-len 128 --ignore-eos --seed 0`.",
        "",
        "Ratios are (b)/(a): above 1 is better for throughput, below 1 is better for latency.",
        "",
        "| concurrency | prompts | output tok/s (a) | (b) | ratio | TTFT p50 ms (a) | (b) | ratio "
        "| TTFT p99 ms (a) | (b) | ratio | TPOT p50 ms (a) | (b) | ratio | TPOT p99 ms (a) | (b) "
        "| ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for concurrency in sorted(runs):
        a, b = runs[concurrency].get("a", {}), runs[concurrency].get("b", {})
        prompts = (a or b).get("completed", 0) + (a or b).get("failed", 0)
        cells = [str(concurrency), str(prompts)]
        for key, digits in (
            ("output_throughput", 0),
            ("median_ttft_ms", 1),
            ("p99_ttft_ms", 1),
            ("median_tpot_ms", 2),
            ("p99_tpot_ms", 2),
        ):
            cells += [
                _num(a.get(key), digits),
                _num(b.get(key), digits),
                _ratio(b.get(key), a.get(key)),
            ]
        lines.append("| " + " | ".join(cells) + " |")
        for side, result in (("a", a), ("b", b)):
            if not result:
                notes.append(f"- concurrency {concurrency}: no result for ({side}).")
                continue
            if result.get("failed"):
                notes.append(
                    f"- concurrency {concurrency} ({side}): {result['failed']} requests failed."
                )
            expected = result.get("completed", 0) * 128
            if result.get("total_output_tokens", expected) < expected:
                notes.append(
                    f"- concurrency {concurrency} ({side}): {result['total_output_tokens']} output "
                    f"tokens, fewer than 128 per request: --ignore-eos was not honoured."
                )
    targets = []
    c64, c1 = runs.get(64, {}), runs.get(1, {})
    if c64.get("a") and c64.get("b"):
        ratio = c64["b"]["output_throughput"] / c64["a"]["output_throughput"]
        verdict = "met" if ratio >= 1.0 else "NOT met"
        targets.append(
            f"- Concurrency 64, output tok/s (b) >= 1.0 x (a): {ratio:.2f} x, {verdict}."
        )
    if c1.get("a") and c1.get("b"):
        delta = c1["b"]["median_ttft_ms"] - c1["a"]["median_ttft_ms"]
        verdict = "met" if delta <= 10.0 else "NOT met"
        targets.append(
            f"- Concurrency 1, TTFT p50 of (b) within +10 ms of (a): {delta:+.1f} ms, {verdict}."
        )
    if targets:
        lines += ["", "## Targets", "", *targets]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--result-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    text = render(args.result_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
