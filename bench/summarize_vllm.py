"""Writes the table of (b)/(a) ratios from `vllm bench serve` results saved by
bench/vllm_vs_parlance.sh: (a) `vllm serve` directly, (b) the whole Parlance path.

    python3 bench/summarize_vllm.py --result-dir DIR --out bench/results/vllm_vs_parlance.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from lib.report import Report, table

_RUN = re.compile(r"^(a|b)_c(\d+)\.json$")
OUTPUT_LEN = 128  # --random-output-len in vllm_vs_parlance.sh
METRICS = (
    ("output_throughput", "output tok/s", 0),
    ("median_ttft_ms", "TTFT p50 ms", 1),
    ("p99_ttft_ms", "TTFT p99 ms", 1),
    ("median_tpot_ms", "TPOT p50 ms", 2),
    ("p99_tpot_ms", "TPOT p99 ms", 2),
)
Runs = dict[int, dict[str, dict[str, Any]]]


def load(result_dir: Path) -> Runs:
    runs: Runs = {}
    for path in sorted(result_dir.iterdir()):
        match = _RUN.match(path.name)
        if match:
            runs.setdefault(int(match.group(2)), {})[match.group(1)] = json.loads(path.read_text())
    return runs


def _ratio(b: float | None, a: float | None) -> str:
    return "n/a" if not a or b is None else f"{b / a:.2f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _text(path: Path, default: str) -> str:
    return path.read_text().strip() if path.exists() else default


def row(concurrency: int, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    prompts = (a or b).get("completed", 0) + (a or b).get("failed", 0)
    cells = [str(concurrency), str(prompts)]
    for key, _, digits in METRICS:
        cells += [
            _num(a.get(key), digits),
            _num(b.get(key), digits),
            _ratio(b.get(key), a.get(key)),
        ]
    return cells


def notes(concurrency: int, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    found = []
    for side, result in (("a", a), ("b", b)):
        if not result:
            found.append(f"- concurrency {concurrency}: no result for ({side}).")
            continue
        if result.get("failed"):
            found.append(
                f"- concurrency {concurrency} ({side}): {result['failed']} requests failed."
            )
        expected = result.get("completed", 0) * OUTPUT_LEN
        if result.get("total_output_tokens", expected) < expected:
            found.append(
                f"- concurrency {concurrency} ({side}): {result['total_output_tokens']} output "
                f"tokens, fewer than {OUTPUT_LEN} per request: --ignore-eos was not honoured."
            )
    return found


def targets(runs: Runs) -> list[str]:
    found = []
    c64, c1 = runs.get(64, {}), runs.get(1, {})
    if c64.get("a") and c64.get("b"):
        ratio = c64["b"]["output_throughput"] / c64["a"]["output_throughput"]
        verdict = "met" if ratio >= 1.0 else "NOT met"
        found.append(f"- Concurrency 64, output tok/s (b) >= 1.0 x (a): {ratio:.2f} x, {verdict}.")
    if c1.get("a") and c1.get("b"):
        delta = c1["b"]["median_ttft_ms"] - c1["a"]["median_ttft_ms"]
        verdict = "met" if delta <= 10.0 else "NOT met"
        found.append(
            f"- Concurrency 1, TTFT p50 of (b) within +10 ms of (a): {delta:+.1f} ms, {verdict}."
        )
    return found


def render(result_dir: Path) -> str:
    runs = load(result_dir)
    report = Report(
        "Parlance vs `vllm serve`: same model, same GPU, one run",
        f"Card: **{_text(result_dir / 'card.txt', 'unknown card')}**. Model: "
        "SmolLM2-135M-Instruct (bf16), max_model_len 2048, gpu_memory_utilization 0.5 on both "
        "sides.",
        "(a) `vllm serve` directly. (b) gateway -> safety (input moderation, profanity backend) "
        "-> generator (vLLM AsyncLLM in-process), Redis rate limits on "
        f"({_text(result_dir / 'redis.txt', 'unknown')}), history off.",
        "Load: `vllm bench serve --backend openai-chat --dataset-name random "
        f"--random-input-len 256 --random-output-len {OUTPUT_LEN} --ignore-eos --seed 0`, run "
        "by bench/vllm_vs_parlance.sh; its percentiles are numpy.percentile's, the definition "
        "above.",
    )
    columns = ["concurrency", "prompts"]
    for _, label, _ in METRICS:
        columns += [f"{label} (a)", "(b)", "ratio"]
    rows = [row(c, runs[c].get("a", {}), runs[c].get("b", {})) for c in sorted(runs)]
    report.add(
        "",
        "Ratios are (b)/(a): above 1 is better for throughput, below 1 is better for latency.",
        "",
        *table(columns, rows),
    )
    if found := targets(runs):
        report.section("Targets", *found)
    found = [n for c in sorted(runs) for n in notes(c, runs[c].get("a", {}), runs[c].get("b", {}))]
    if found:
        report.section("Notes", *found)
    return report.text()


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
