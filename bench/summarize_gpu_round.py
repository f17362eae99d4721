"""Tables from one bench/gpu_round.sh result folder:

    python bench/summarize_gpu_round.py RESULT_DIR   # writes embed.md, multiturn.md, lora.md

embed.md: texts/s and latency of Parlance (b) and `vllm serve --runner pooling` (a) per batch
shape, the ratio b/a, and the cosine agreement of their vectors for the same 64 sentences.
multiturn.md: per routing run, TTFT p50/p99 of first and later turns, output tok/s, and the
replicas' prefix-cache hit rate over the run (hits / queries, in tokens, from the counters
scraped before and after it), with the mean per routing mode.
lora.md: `vllm bench serve` on the base and on its LoRA adapter, same server, alternating
rounds: output tok/s, TTFT and TPOT medians per round, and the adapter/base ratio of the means.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def cosine_agreement(folder: Path) -> str:
    a, b = load(folder / "vectors_a.json"), load(folder / "vectors_b.json")
    if not a or not b:
        return "-"
    sims = []
    for x, y in zip(a, b, strict=True):
        dot = sum(p * q for p, q in zip(x, y, strict=True))
        sims.append(dot / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y)))
    return f"min {min(sims):.5f}, mean {sum(sims) / len(sims):.5f} over {len(sims)} sentences"


def embed_table(folder: Path) -> list[str]:
    lines = [
        "| batch | concurrency | vllm serve texts/s | Parlance texts/s | ratio | "
        "p50 ms (a / b) | p99 ms (a / b) | client CPU s (b) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 32):
        a = load(folder / f"embed_a_b{batch}.json")
        b = load(folder / f"embed_b_b{batch}.json")
        if not a or not b:
            continue
        lines.append(
            f"| {batch} | {b['concurrency']} | {a['texts_per_s']:.0f} | {b['texts_per_s']:.0f} | "
            f"{b['texts_per_s'] / a['texts_per_s']:.2f} | {a['latency_p50_ms']:.1f} / "
            f"{b['latency_p50_ms']:.1f} | {a['latency_p99_ms']:.1f} / {b['latency_p99_ms']:.1f} | "
            f"{b['client_cpu_s']:.1f} of {b['wall_s']:.1f} wall |"
        )
    lines += ["", f"Cosine agreement of the two servers' vectors: {cosine_agreement(folder)}."]
    return lines


def counters(path: Path) -> dict[str, float]:
    """Sums of the prefix-cache counters in one scrape."""
    totals = {"queries": 0.0, "hits": 0.0}
    if not path.exists():
        return totals
    for line in path.read_text().splitlines():
        match = re.match(r"parlance_generator_prefix_cache_(queries|hits)_total\{.*\} (\S+)", line)
        if match:
            totals[match.group(1)] += float(match.group(2))
    return totals


def hit_rate(folder: Path, run: int) -> float:
    queries = hits = 0.0
    for gen in (0, 1):
        before = counters(folder / f"multiturn_metrics_before{run}_gen{gen}.txt")
        after = counters(folder / f"multiturn_metrics_after{run}_gen{gen}.txt")
        queries += after["queries"] - before["queries"]
        hits += after["hits"] - before["hits"]
    return hits / queries if queries else math.nan


def multiturn_table(folder: Path) -> list[str]:
    lines = [
        "| run | routing | TTFT first turn p50 / p99 ms | TTFT later turns p50 / p99 ms | "
        "output tok/s | prefix-cache hit rate | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    by_mode: dict[str, list[tuple[float, float, float, float]]] = {}
    for run in range(1, 9):
        r = load(folder / f"multiturn_{run}.json")
        if not r:
            continue
        rate = hit_rate(folder, run)
        lines.append(
            f"| {run} | {r['label']} | {r['ttft_first_p50_ms']:.1f} / {r['ttft_first_p99_ms']:.1f}"
            f" | {r['ttft_later_p50_ms']:.1f} / {r['ttft_later_p99_ms']:.1f} | "
            f"{r['output_tok_s']:.0f} | {rate:.3f} | {r['errors']} |"
        )
        by_mode.setdefault(r["label"], []).append(
            (r["ttft_later_p50_ms"], r["ttft_later_p99_ms"], r["output_tok_s"], rate)
        )
    lines += ["", "| routing | mean later-turn TTFT p50 / p99 ms | mean tok/s | mean hit rate |"]
    lines.append("|---|---|---|---|")
    for mode, rows in by_mode.items():
        n = len(rows)
        lines.append(
            f"| {mode} | {sum(r[0] for r in rows) / n:.1f} / {sum(r[1] for r in rows) / n:.1f} | "
            f"{sum(r[2] for r in rows) / n:.0f} | {sum(r[3] for r in rows) / n:.3f} |"
        )
    return lines


def lora_table(folder: Path) -> list[str]:
    lines = [
        "| round | model | completed | output tok/s | TTFT p50 ms | TPOT p50 ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    mean: dict[str, list[float]] = {}
    for path in sorted(folder.glob("lorabench_*_*.json")):
        _, rnd, model = path.stem.split("_", 2)
        d = json.loads(path.read_text())
        mean.setdefault(model, []).append(d["output_throughput"])
        lines.append(
            f"| {rnd} | {model} | {d['completed']} | {d['output_throughput']:,.0f} | "
            f"{d['median_ttft_ms']:.1f} | {d['median_tpot_ms']:.2f} |"
        )
    if "smollm2" in mean and "tuned" in mean:
        base = sum(mean["smollm2"]) / len(mean["smollm2"])
        tuned = sum(mean["tuned"]) / len(mean["tuned"])
        lines += ["", f"Adapter / base output tok/s (means of the rounds): {tuned / base:.3f}"]
    return lines


def main() -> None:
    folder = Path(sys.argv[1])
    cards_file = folder / "cards.txt"
    cards = cards_file.read_text().split("\n") if cards_file.exists() else []
    header = (
        f"Cards: {', '.join(c for c in cards if c)}. Percentiles: linear interpolation between "
        "the closest ranks (bench/lib/stats.py)."
    )
    if any(folder.glob("embed_*_b1.json")):
        (folder / "embed.md").write_text("\n".join([header, "", *embed_table(folder)]) + "\n")
    if any(folder.glob("multiturn_*.json")):
        lines = [header, "", *multiturn_table(folder)]
        (folder / "multiturn.md").write_text("\n".join(lines) + "\n")
    if any(folder.glob("lorabench_*_*.json")):
        (folder / "lora.md").write_text("\n".join([header, "", *lora_table(folder)]) + "\n")


if __name__ == "__main__":
    main()
