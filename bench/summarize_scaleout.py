"""Scaling from one GPU to two, for `vllm serve` and for Parlance, from two result folders of
bench/vllm_vs_parlance.sh (one run with GPUS=1, one with GPUS=2, same card, same call):

    python3 bench/summarize_scaleout.py --one DIR_GPUS1 --two DIR_GPUS2 \
        --out bench/results/scaleout_2gpu.md

(a) is `vllm serve` (with `--data-parallel-size 2` on two GPUs), (b) the whole Parlance path
(with one generator replica per GPU behind one gateway). Scaling is two GPUs' output tok/s over
one GPU's; "Parlance / vLLM DP" compares the two on two GPUs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from lib.report import Report, table
from summarize_vllm import Runs, load

_REQUESTS = re.compile(r"^parlance_generator_requests_total\{[^}]*\} ([0-9.e+]+)$", re.M)
_SPLIT = re.compile(r"^split_([ab])_c(\d+)_\d\.json$")


def _tok(result: dict[str, Any]) -> float | None:
    value = result.get("output_throughput")
    return float(value) if value is not None else None


def _ratio(top: float | None, bottom: float | None) -> str:
    return "n/a" if not top or not bottom else f"{top / bottom:.2f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def scaling_rows(one: Runs, two: Runs) -> list[list[str]]:
    rows = []
    for c in sorted(set(one) & set(two)):
        a1, b1 = one[c].get("a", {}), one[c].get("b", {})
        a2, b2 = two[c].get("a", {}), two[c].get("b", {})
        rows.append(
            [
                str(c),
                _num(_tok(a1)),
                _num(_tok(a2)),
                _ratio(_tok(a2), _tok(a1)),
                _num(_tok(b1)),
                _num(_tok(b2)),
                _ratio(_tok(b2), _tok(b1)),
                _ratio(_tok(b2), _tok(a2)),
            ]
        )
    return rows


def latency_rows(one: Runs, two: Runs) -> list[list[str]]:
    rows = []
    for label, runs in (("1 GPU", one), ("2 GPUs", two)):
        for c in sorted(runs):
            a, b = runs[c].get("a", {}), runs[c].get("b", {})
            rows.append(
                [label, str(c)]
                + [_num(r.get(k), 1) for k in ("median_ttft_ms", "p99_ttft_ms") for r in (a, b)]
            )
    return rows


def split_lines(result_dir: Path, runs: Runs) -> list[str]:
    """Two clients at half the concurrency each against one client at the full one."""
    summed: dict[tuple[str, int], float] = {}
    for path in sorted(result_dir.glob("split_*.json")):
        match = _SPLIT.match(path.name)
        if match:
            key = (match.group(1), int(match.group(2)))
            summed[key] = summed.get(key, 0.0) + (_tok(json.loads(path.read_text())) or 0.0)
    lines = []
    for (side, c), total in sorted(summed.items()):
        single = _tok(runs.get(c, {}).get(side, {}))
        lines.append(
            f"- ({side}) concurrency {c}: one client {_num(single)} tok/s; two clients at "
            f"{c // 2} each {_num(total)} tok/s together (ratio {_ratio(total, single)})."
        )
    return lines


def replica_lines(result_dir: Path) -> list[str]:
    """Calls each replica finished: from its metrics scrape, else from its log."""
    lines = []
    for path in sorted(result_dir.glob("generator*_metrics.txt")):
        calls = sum(float(v) for v in _REQUESTS.findall(path.read_text()))
        lines.append(f"- {path.stem.removesuffix('_metrics')}: {calls:,.0f} Generate calls served.")
    if not lines:
        for path in sorted((result_dir / "logs").glob("generator*.txt")):
            calls = path.read_text().count("generate finished")
            lines.append(f"- {path.stem}: {calls:,} Generate calls finished (its log).")
    return lines


def targets(one: Runs, two: Runs) -> list[str]:
    found = []
    for c in sorted(set(one) & set(two)):
        if c < 128:
            continue
        b1, b2, a2 = (
            _tok(one[c].get("b", {})),
            _tok(two[c].get("b", {})),
            _tok(two[c].get("a", {})),
        )
        if b1 and b2:
            verdict = "met" if b2 / b1 >= 1.8 else "NOT met"
            found.append(f"- c={c}: Parlance 1 -> 2 GPUs >= 1.8x: {b2 / b1:.2f}x, {verdict}.")
        if a2 and b2:
            verdict = "met" if b2 / a2 >= 1.0 else "NOT met"
            found.append(
                f"- c={c}: Parlance / vLLM DP on 2 GPUs >= 1.0x: {b2 / a2:.2f}x, {verdict}."
            )
    return found


def render(one_dir: Path, two_dir: Path) -> str:
    one, two = load(one_dir), load(two_dir)
    card = (two_dir / "card.txt").read_text().strip() if (two_dir / "card.txt").exists() else "?"
    report = Report(
        "Scaling from one GPU to two: `vllm serve` data parallel vs Parlance replicas",
        f"Card: **{card}** (one machine, both runs in the same call). Model: SmolLM2-135M-Instruct "
        "(bf16), max_model_len 2048, gpu_memory_utilization 0.5 per engine.",
        "(a) `vllm serve` (two GPUs: `--data-parallel-size 2`). (b) gateway (4 workers per GPU, "
        "Redis limits on, input moderation on, output moderation off, history off) -> safety "
        "(profanity) -> generator replicas (vLLM AsyncLLM, one process per GPU; the gateway "
        "routes each call to the replica with the fewest calls in flight).",
        "Load: `vllm bench serve --backend openai-chat --dataset-name random --random-input-len "
        "256 --random-output-len 128 --ignore-eos --seed 0`, one client.",
    )
    report.section(
        "Output tok/s",
        *table(
            [
                "concurrency",
                "vLLM 1 GPU",
                "vLLM DP 2",
                "vLLM scaling",
                "Parlance 1 GPU",
                "Parlance 2",
                "Parlance scaling",
                "Parlance / vLLM DP (2 GPUs)",
            ],
            scaling_rows(one, two),
        ),
    )
    report.section(
        "Time to first token (ms)",
        *table(
            ["GPUs", "concurrency", "TTFT p50 (a)", "(b)", "TTFT p99 (a)", "(b)"],
            latency_rows(one, two),
        ),
    )
    if found := targets(one, two):
        report.section("Targets", *found)
    checks = split_lines(one_dir, one) + split_lines(two_dir, two)
    if checks:
        report.section("Is one client the limit?", *checks)
    if found := replica_lines(two_dir):
        report.section("Both replicas served", *found)
    return report.text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", type=Path, required=True, help="result folder of GPUS=1")
    parser.add_argument("--two", type=Path, required=True, help="result folder of GPUS=2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    text = render(args.one, args.two)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
