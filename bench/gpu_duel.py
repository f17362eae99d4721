"""The summary and the thread sampler of bench/gpu_duel.sh (issue 20: the Parlance path against
`vllm serve`, both servers up at once on one GPU, arms alternated in rounds).

    python3 bench/gpu_duel.py snap --pid serve=PID --pid generator=PID --out snap.json
    python3 bench/gpu_duel.py summarize --dir RESULTS --out RESULTS/gpu_duel.md

`snap`: the CPU seconds of every thread of each named process and of its descendants (vLLM's
engine core is a child process), read from /proc through psutil, with the wall clock. Two snaps
around an arm give each process's cores and its busiest thread's share of one core: a front end
whose event-loop thread sits near 100% is the limit of its server, whatever the GPU could do.

`summarize`: the load files of gpu_probe.py (`load_*.json`, each with its round) as ratios to
`vllm serve`'s arm of the same round and concurrency (median over rounds, and the spread), the
threads' use per arm, and the interleaved c=1 report of bench/ttft_c1.py where there is one.
Pairing by round is the point: two starts of one server differed by 14% at c=64 in one call
(bench/results/gpu_probe.md), more than the effects looked for.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
from gpu_probe import run_files

# -- threads ------------------------------------------------------------------------------------


def _thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def snapshot(roots: dict[str, int]) -> dict[str, Any]:
    """{name: [{pid, cmd, threads: {tid: [comm, cpu s]}}]} for each root and its descendants."""
    taken: dict[str, Any] = {"wall": time.time(), "groups": {}}
    for name, pid in roots.items():
        processes = []
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            family = []
        for process in family:
            try:
                threads = {
                    str(t.id): [_thread_name(process.pid, t.id), t.user_time + t.system_time]
                    for t in process.threads()
                }
                cmd = " ".join(process.cmdline())[:80] or process.name()
            except psutil.Error:
                continue
            processes.append({"pid": process.pid, "cmd": cmd, "threads": threads})
        taken["groups"][name] = processes
    return taken


def thread_use(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per named group, per process: cores used between the snaps and the busiest thread."""
    wall = after["wall"] - before["wall"]
    out: dict[str, list[dict[str, Any]]] = {}
    for name, processes in after["groups"].items():
        earlier = {p["pid"]: p for p in before["groups"].get(name, [])}
        rows = []
        for p in processes:
            old = earlier.get(p["pid"], {"threads": {}})["threads"]
            deltas = [
                (comm, cpu - old.get(tid, [comm, 0.0])[1])
                for tid, (comm, cpu) in p["threads"].items()
            ]
            total = sum(d for _, d in deltas)
            if wall <= 0 or total / wall < 0.02:  # idle processes (tokenizer pools, ...) left out
                continue
            comm, top = max(deltas, key=lambda d: d[1])
            rows.append(
                {
                    "pid": p["pid"],
                    "cmd": p["cmd"],
                    "cores": total / wall,
                    "top_thread": comm,
                    "top_share": top / wall,
                }
            )
        out[name] = sorted(rows, key=lambda r: -r["cores"])
    return out


# -- the summary --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return _fmt(values[0], digits)
    return (
        f"{_fmt(statistics.median(values), digits)} "
        f"({_fmt(min(values), digits)}-{_fmt(max(values), digits)})"
    )


def ratio_table(runs: list[dict[str, Any]]) -> list[str]:
    """Each arm against serve in the same round and concurrency: medians (min-max) over rounds."""
    serve = {(r["round"], r["concurrency"]): r for r in runs if r["label"] == "serve"}
    arms: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault((r["label"], r["concurrency"]), []).append(r)
    lines = [
        "| arm | c | rounds | ok/err | output tok/s | ratio to serve | TTFT p50 ms "
        "| +ms vs serve | TPOT p50 ms | TPOT ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"serve": 0}
    for (label, c), items in sorted(
        arms.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 1), kv[0][0])
    ):
        ratios, added, tpot_ratios = [], [], []
        for r in items:
            base = serve.get((r["round"], c))
            if base is None or label == "serve":
                continue
            ratios.append(r["output_tok_s"] / base["output_tok_s"])
            added.append(r["ttft_p50_ms"] - base["ttft_p50_ms"])
            tpot_ratios.append(r["tpot_p50_ms"] / base["tpot_p50_ms"])
        cells = [
            label,
            str(c),
            str(len(items)),
            f"{sum(r['ok'] for r in items)}/{sum(r['errors'] for r in items)}",
            _spread([r["output_tok_s"] for r in items], 0),
            _spread(ratios) if label != "serve" else "1",
            _spread([r["ttft_p50_ms"] for r in items], 1),
            _spread(added, 1) if label != "serve" else "0",
            _spread([r["tpot_p50_ms"] for r in items], 2),
            _spread(tpot_ratios) if label != "serve" else "1",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def threads_table(folder: Path, runs: list[dict[str, Any]]) -> list[str]:
    """Per arm (first round's c=64 and c=256 only, to keep it short): the busy processes."""
    lines = [
        "| arm | c | process | cores | busiest thread | its share of a core |",
        "|---|---:|---|---:|---|---:|",
    ]
    for r in sorted(runs, key=lambda r: r["order"]):
        if r["round"] != 1 or r["concurrency"] == 1:
            continue
        a = folder / f"snap_{r['order']:02d}_a.json"
        b = folder / f"snap_{r['order']:02d}_b.json"
        if not (a.exists() and b.exists()):
            continue
        use = thread_use(json.loads(a.read_text()), json.loads(b.read_text()))
        for group, rows in use.items():
            for row in rows[:3]:
                lines.append(
                    f"| {r['label']} | {r['concurrency']} | {group}: {row['cmd'][:48]} "
                    f"| {row['cores']:.2f} | {row['top_thread']} | {row['top_share']:.2f} |"
                )
    return lines


def summarize(folder: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("load_*.json"))]
    card = folder / "card.txt"
    lines = [
        "# GPU duel: `vllm serve` and the Parlance path up at once, arms alternated in rounds",
        "",
        f"Card: {card.read_text().strip() if card.exists() else '?'}. Client: bench/gpu_probe.py "
        "(closed loop, random-token prompts of 256 ids decoded and tagged per request, "
        "ignore_eos, 128 tokens). Ratios: each arm over `vllm serve`'s arm of the same round "
        "and concurrency; median over rounds (min-max).",
        "",
        *ratio_table(runs),
        "",
        "Busy processes and their busiest thread (first round), from /proc around each arm:",
        "",
        *threads_table(folder, runs),
    ]
    for path in sorted(folder.glob("ttft_c1*.md")):
        lines += ["", f"## {path.name}", "", path.read_text().strip()]
    lines += run_files(folder)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    snap = commands.add_parser("snap")
    snap.add_argument("--pid", action="append", default=[], metavar="NAME=PID")
    snap.add_argument("--out", required=True)
    s = commands.add_parser("summarize")
    s.add_argument("--dir", required=True)
    s.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "snap":
        roots = {k: int(v) for k, v in (item.split("=", 1) for item in args.pid)}
        Path(args.out).write_text(json.dumps(snapshot(roots)))
    else:
        text = summarize(Path(args.dir))
        Path(args.out).write_text(text)
        print(text)


if __name__ == "__main__":
    main()
