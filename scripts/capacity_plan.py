#!/usr/bin/env python3
"""Writes docs/CAPACITY.md: Parlance sized for a number of daily users, from the measured
figures in bench/results/ and stated assumptions about the traffic.

Every input figure is parsed from a benchmark result file, which the document names; a file or
a figure that is missing stops the script with the file and what it looked for. Assumptions
are command-line options with defaults; the document lists them. The limits of the deployment
(replica bounds, volume size, outbox bounds) come from deploy/kubernetes and the gateway's
settings, so the plan says where those defaults fall short.

  python scripts/capacity_plan.py                 # writes docs/CAPACITY.md
  python scripts/capacity_plan.py --check         # fails if docs/CAPACITY.md is stale
  python scripts/capacity_plan.py --daily-users 5000000 --out /tmp/plan.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MANIFESTS = ROOT / "deploy" / "kubernetes" / "base"
OUT = ROOT / "docs" / "CAPACITY.md"

LOAD_TEST = "load_cpu.md"
# The section of LOAD_TEST measured on the current history write path.
LOAD_SECTION = "## Rerun after the history append change"
GATEWAY_OVERHEAD = "gateway_overhead.md"
GPU_RUN = "vllm_vs_parlance.md"
HISTORY_BENCH = "history_bench.md"
LIMITS_BENCH = "limits_bench.md"
SAFETY_BENCH = "safety_bench.md"
STORAGE_BENCH = "history_storage.md"

# Redis commands of one chat completion, counted in the gateway's code (deps.py, chat/limits.py,
# leases.py): the RPM decision, the TPM reservation, the lease's acquire and release, the TPM
# reconciliation; plus one lease heartbeat every lease_ttl_s / 3 while the stream lasts.
REDIS_OPS_PER_REQUEST = 5


class MissingFigure(Exception):
    """A benchmark file, or a figure in it, is not where this script reads it."""


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str  # the benchmark result file
    where: str  # which row / line of it

    def cite(self) -> str:
        return f"`bench/results/{self.source}` ({self.where})"


@dataclass(frozen=True)
class Assumptions:
    daily_users: int = 1_000_000
    conversations_per_user: float = 2.0
    turns_per_conversation: float = 5.0
    user_message_tokens: int = 60
    answer_tokens: int = 250
    peak_to_mean: float = 3.0
    stored_share: float = 0.5
    # Characters per token (English text, SmolLM2/Llama-style tokenizers).
    chars_per_token: float = 4.0
    # Autoscalers aim at this share of a replica's capacity (the gateway HPA's CPU target).
    target_utilization: float = 0.7


HELP = {
    "daily_users": "users a day",
    "conversations_per_user": "conversations per user a day",
    "turns_per_conversation": "user turns (requests) per conversation",
    "user_message_tokens": "tokens of each user message",
    "answer_tokens": "tokens of each answer",
    "peak_to_mean": "peak request rate over the day's mean",
    "stored_share": "share of requests with store: true (kept in history)",
    "chars_per_token": "characters per token",
    "target_utilization": "share of capacity replicas are sized to use at peak",
}


# --- reading bench/results ----------------------------------------------------------------------


def read(name: str) -> str:
    path = RESULTS / name
    if not path.exists():
        raise MissingFigure(f"bench/results/{name} is missing (the capacity plan reads it)")
    return path.read_text()


def search(name: str, pattern: str, what: str) -> re.Match[str]:
    match = re.search(pattern, read(name), flags=re.MULTILINE)
    if match is None:
        raise MissingFigure(f"bench/results/{name}: no {what} (looked for /{pattern}/)")
    return match


def number(text: str) -> float:
    return float(text.replace(",", ""))


def table(name: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the file's first markdown table whose first header cell is
    `first_header` (cells as lists: headers may repeat, e.g. "(b)" and "ratio")."""
    lines = read(name).splitlines()
    for i, line in enumerate(lines):
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and header[0] == first_header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return header, rows
    raise MissingFigure(f"bench/results/{name}: no table starting with `| {first_header} |`")


def section(name: str, heading: str) -> str:
    """The text of one `## ` section of a result file."""
    text = read(name)
    start = text.find(heading + " ")
    if start < 0:
        start = text.find(heading + "\n")
    if start < 0:
        raise MissingFigure(f"bench/results/{name}: no section `{heading}`")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end > 0 else len(text)]


def load_test() -> dict[str, Figure]:
    """CPU per request of gateway, safety and history at the last step whose p99 TTFT stayed
    under 1 s (the CPU stack saturated, store: true, moderation on)."""
    text = section(LOAD_TEST, LOAD_SECTION)
    rows = _all_tables(text, "N")
    steps = [r for r in rows if "TTFT p99" in r]
    # The CPU table (cores per process); the memory table has the same columns but no
    # "machine busy".
    cpu = {r["N"]: r for r in rows if "machine busy" in r}
    fit = [r for r in steps if number(r["TTFT p99"].split()[0]) < 1.0]
    if not fit or fit[-1]["N"] not in cpu:
        raise MissingFigure(f"bench/results/{LOAD_TEST}: no step under 1 s p99 TTFT with CPU")
    step = fit[-1]
    rate = number(step["req/s"])
    reply = re.search(r"scripted, (\d+) tokens a reply", text)
    statements = re.search(r"history appends with (\d+) statements", text)
    if reply is None or statements is None:
        raise MissingFigure(f"bench/results/{LOAD_TEST}: {LOAD_SECTION} lost its engine line")
    tokens = number(reply.group(1))
    where = f"section after the history change, N = {step['N']}, {rate:g} req/s"
    figures = {
        f"{svc}_ms": Figure(number(cpu[step["N"]][svc]) / rate * 1000, "ms CPU", LOAD_TEST, where)
        for svc in ("gateway", "safety", "history")
    }
    figures["load_tokens"] = Figure(tokens, "tokens", LOAD_TEST, "engine line")
    figures["statements"] = Figure(
        number(statements.group(1)), "", LOAD_TEST, "section after the history change"
    )
    return figures


def _all_tables(text: str, first_header: str) -> list[dict[str, str]]:
    """Rows of every markdown table in `text` whose first header cell is `first_header`."""
    lines = text.splitlines()
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in lines:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells if cells[0] == first_header else []
        elif header and not set(cells[0]) <= {"-", ":"}:
            if len(cells) != len(header):
                raise MissingFigure(f"a `| {first_header} |` table row has a cell too many/few")
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def gateway_overhead() -> dict[str, Figure]:
    pattern = (
        r"At 100 concurrent:.*CPU per request: gateway [\d.]+ ms \(B1\) and ([\d.]+) ms "
        r"\(B2\), safety ([\d.]+) ms \(B2\)"
    )
    match = search(GATEWAY_OVERHEAD, pattern, "CPU per request at 100 concurrent")
    tokens = search(GATEWAY_OVERHEAD, r"reply of (\d+) tokens", "reply length").group(1)
    where = f"100 concurrent, moderation on, {tokens}-token replies, no store"
    return {
        "gateway_ms": Figure(number(match.group(1)), "ms CPU", GATEWAY_OVERHEAD, where),
        "safety_ms": Figure(number(match.group(2)), "ms CPU", GATEWAY_OVERHEAD, where),
        "tokens": Figure(number(tokens), "tokens", GATEWAY_OVERHEAD, "engine line"),
    }


def gpu_run() -> dict[str, Figure]:
    """Parlance's best output throughput on one GPU, with its latencies at that load."""
    header, rows = table(GPU_RUN, "concurrency")
    if not rows:
        raise MissingFigure(f"bench/results/{GPU_RUN}: the results table is empty")
    card = search(GPU_RUN, r"Card: \*\*(.+?)\*\*", "card").group(1)
    model = search(GPU_RUN, r"Model: (\S+)", "model").group(1)
    lens = search(GPU_RUN, r"random-input-len (\d+) --random-output-len (\d+)", "lengths")

    def parlance(row: list[str], column: str) -> float:
        # Columns go "<measure> (a) | (b) | ratio": the cell after the (a) one is Parlance's.
        if column not in header:
            raise MissingFigure(f"bench/results/{GPU_RUN}: no column `{column}`")
        return number(row[header.index(column) + 1])

    best = max(rows, key=lambda r: parlance(r, "output tok/s (a)"))
    where = f"{card}, {model}, concurrency {best[0]}, Parlance column"
    return {
        "tok_s": Figure(parlance(best, "output tok/s (a)"), "output tok/s", GPU_RUN, where),
        "ttft_ms": Figure(parlance(best, "TTFT p50 ms (a)"), "ms", GPU_RUN, where),
        "tpot_ms": Figure(parlance(best, "TPOT p50 ms (a)"), "ms", GPU_RUN, where),
        "concurrency": Figure(number(best[0]), "streams", GPU_RUN, where),
        "input_len": Figure(number(lens.group(1)), "tokens", GPU_RUN, "load line"),
        "output_len": Figure(number(lens.group(2)), "tokens", GPU_RUN, "load line"),
        "card": Figure(0, card, GPU_RUN, "header"),
        "model": Figure(0, model, GPU_RUN, "header"),
    }


def history_bench() -> dict[str, Figure]:
    """The append row of the first table that has one, in either layout the benchmark wrote
    (`| | SQLite | PostgreSQL |` with "20.1 ms" cells, or `SQLite p50` / `PostgreSQL p50`
    columns of plain numbers)."""
    lines = read(HISTORY_BENCH).splitlines()
    header: list[str] = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            header = []
        elif not header:
            header = cells
        elif cells[0].startswith("append one exchange"):
            where = "append one exchange, p50, one client"
            return {
                key: Figure(_cell(header, cells, db), "ms", HISTORY_BENCH, where)
                for key, db in (("sqlite_ms", "SQLite"), ("postgres_ms", "PostgreSQL"))
            }
    raise MissingFigure(f"bench/results/{HISTORY_BENCH}: no `append one exchange` row")


def _cell(header: list[str], cells: list[str], db: str) -> float:
    for name in (f"{db} p50", db):
        if name in header:
            return number(cells[header.index(name)].removesuffix("ms").strip())
    raise MissingFigure(f"bench/results/{HISTORY_BENCH}: no {db} column")


def storage_bench() -> dict[str, Figure]:
    match = search(
        STORAGE_BENCH,
        r"Bytes stored per byte of message text \(round 2\): ([\d.]+)",
        "bytes per byte of text",
    )
    where = "PostgreSQL tables and indexes grown per byte of message text, round 2"
    return {"factor": Figure(number(match.group(1)), "bytes/byte", STORAGE_BENCH, where)}


def limits_bench() -> dict[str, Figure]:
    incr = search(LIMITS_BENCH, r"plain INCR round trip\s+([\d,]+) ops/s", "INCR rate")
    where = "plain INCR round trips, 64 callers, one Python client"
    return {"incr_per_s": Figure(number(incr.group(1)), "ops/s", LIMITS_BENCH, where)}


def safety_bench() -> dict[str, Figure]:
    def batched(backend: str) -> float:
        pattern = rf"^{re.escape(backend)}\s+\d+\s+[\d.]+\s+[\d.]+\s+([\d.]+)"
        return number(search(SAFETY_BENCH, pattern, f"{backend} row").group(1))

    where = "32 callers, batched, texts/s"
    return {
        "profanity": Figure(batched("profanity"), "texts/s", SAFETY_BENCH, where),
        "detoxify": Figure(
            batched("detoxify, bert-base size (random)"), "texts/s", SAFETY_BENCH, where
        ),
    }


def measured() -> dict[str, dict[str, Figure]]:
    return {
        "load": load_test(),
        "overhead": gateway_overhead(),
        "gpu": gpu_run(),
        "history": history_bench(),
        "limits": limits_bench(),
        "safety": safety_bench(),
        "storage": storage_bench(),
    }


# --- the deployment's own limits ----------------------------------------------------------------


def manifests() -> dict[str, Any]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "metadata" in doc:  # kustomization.yaml has none
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    try:
        postgres = docs[("StatefulSet", "postgres")]["spec"]["volumeClaimTemplates"][0]
        return {
            "gateway_max": docs[("HorizontalPodAutoscaler", "gateway")]["spec"]["maxReplicas"],
            "generator_max": docs[("ScaledObject", "generator")]["spec"]["maxReplicaCount"],
            "safety_max": docs[("HorizontalPodAutoscaler", "safety")]["spec"]["maxReplicas"],
            "history_max": docs[("HorizontalPodAutoscaler", "history")]["spec"]["maxReplicas"],
            "pg_volume": postgres["spec"]["resources"]["requests"]["storage"],
        }
    except KeyError as exc:
        raise MissingFigure(f"deploy/kubernetes/base: no {exc}") from exc


def gateway_defaults() -> dict[str, float]:
    from parlance.gateway.config import GatewaySettings

    defaults = {name: f.default for name, f in GatewaySettings.model_fields.items()}
    keys = ("outbox_max_items", "outbox_max_bytes", "lease_ttl_s", "max_concurrent_requests")
    return {key: float(defaults[key]) for key in keys}


def history_pool() -> int:
    """Connections one history replica may hold (pool plus overflow, its defaults)."""
    from parlance.history.config import HistorySettings

    defaults = {name: f.default for name, f in HistorySettings.model_fields.items()}
    return int(defaults["db_pool_size"]) + int(defaults["db_max_overflow"])


def gibibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Gi|Ti|Mi)", quantity)
    if match is None:
        raise MissingFigure(f"deploy/kubernetes/base/postgres.yaml: volume size {quantity!r}")
    return int(match.group(1)) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[match.group(2)]


# --- the plan -----------------------------------------------------------------------------------


def per_token_fit(short: Figure, long: Figure, short_tokens: float, long_tokens: float) -> tuple:
    """CPU per request as fixed + per streamed token, through the two measured reply lengths
    (never below zero per token)."""
    per_token = max(0.0, (long.value - short.value) / (long_tokens - short_tokens))
    fixed = long.value - per_token * long_tokens
    return fixed, per_token


def plan(a: Assumptions, m: dict[str, dict[str, Figure]], limits: dict[str, Any]) -> dict:
    p: dict[str, Any] = {}
    p["requests_day"] = a.daily_users * a.conversations_per_user * a.turns_per_conversation
    p["mean_rps"] = p["requests_day"] / 86_400
    p["peak_rps"] = p["mean_rps"] * a.peak_to_mean
    # Turn k sends the conversation so far: every earlier user message and answer, then its own.
    p["prompt_tokens"] = a.user_message_tokens + (a.turns_per_conversation - 1) / 2 * (
        a.user_message_tokens + a.answer_tokens
    )
    gpu = m["gpu"]
    p["stream_s"] = (gpu["ttft_ms"].value + a.answer_tokens * gpu["tpot_ms"].value) / 1000
    p["peak_streams"] = p["peak_rps"] * p["stream_s"]

    load, over = m["load"], m["overhead"]
    tokens = (over["tokens"].value, load["load_tokens"].value)
    for svc in ("gateway", "safety"):
        fixed, per_token = per_token_fit(over[f"{svc}_ms"], load[f"{svc}_ms"], *tokens)
        p[f"{svc}_fit"] = (fixed, per_token)
        p[f"{svc}_ms"] = fixed + per_token * a.answer_tokens
        p[f"{svc}_cores"] = p["peak_rps"] * p[f"{svc}_ms"] / 1000 / a.target_utilization
    # 1 CPU limit per pod, and open streams within the per-process cap at the target share.
    cap = gateway_defaults()["max_concurrent_requests"] * a.target_utilization
    p["gateway_replicas"] = max(math.ceil(p["gateway_cores"]), math.ceil(p["peak_streams"] / cap))
    p["safety_replicas"] = max(2, math.ceil(p["safety_cores"]))
    p["detoxify_factor"] = m["safety"]["profanity"].value / m["safety"]["detoxify"].value

    p["peak_output_tok_s"] = p["peak_rps"] * a.answer_tokens
    p["gpus"] = math.ceil(p["peak_output_tok_s"] / (gpu["tok_s"].value * a.target_utilization))

    p["writes_s"] = p["peak_rps"] * a.stored_share
    p["statements_s"] = p["writes_s"] * load["statements"].value
    p["history_cores"] = p["writes_s"] * load["history_ms"].value / 1000 / a.target_utilization
    p["history_replicas"] = max(2, math.ceil(p["history_cores"]))

    heartbeats = p["stream_s"] / (gateway_defaults()["lease_ttl_s"] / 3)
    p["redis_ops_request"] = REDIS_OPS_PER_REQUEST + heartbeats
    p["redis_ops_s"] = p["peak_rps"] * p["redis_ops_request"]

    text = (a.user_message_tokens + a.answer_tokens) * a.chars_per_token
    p["exchange_text_bytes"] = text
    p["exchange_db_bytes"] = text * m["storage"]["factor"].value
    p["stored_day"] = p["requests_day"] * a.stored_share
    p["db_gb_day"] = p["stored_day"] * p["exchange_db_bytes"] / 1e9
    p["pg_volume_days"] = gibibytes(limits["pg_volume"]) * 2**30 / 1e9 / p["db_gb_day"]

    gw = gateway_defaults()
    per_gateway_writes = p["writes_s"] / p["gateway_replicas"]
    outbox_item = p["prompt_tokens"] * a.chars_per_token + text  # the request and its answer
    p["outbox_item_bytes"] = outbox_item
    p["outbox_minutes"] = (
        min(gw["outbox_max_items"], gw["outbox_max_bytes"] / outbox_item) / per_gateway_writes / 60
    )
    p["outbox_mb_min"] = p["writes_s"] * outbox_item * 60 / 1e6
    p["streams_per_gateway"] = p["peak_streams"] / p["gateway_replicas"]
    p["redis_per_gateway"] = p["redis_ops_s"] / p["gateway_replicas"]
    pool = history_pool()
    p["history_pool"] = pool
    p["appends_per_replica"] = pool / (m["history"]["postgres_ms"].value / 1000)
    p["max_concurrent"] = gw["max_concurrent_requests"]
    return p


def headroom(p: dict, a: Assumptions, m: dict, limits: dict) -> list[tuple[str, float, str]]:
    """(component, capacity at the manifests' bounds / peak demand, what removes the limit)."""
    gpu_rps = limits["generator_max"] * m["gpu"]["tok_s"].value * a.target_utilization
    rows = [
        (
            f"generator (ScaledObject maxReplicaCount {limits['generator_max']}, one GPU each)",
            gpu_rps / a.answer_tokens / p["peak_rps"],
            "raise maxReplicaCount (and GPUs), or a model/engine setting with more tokens/s "
            "per GPU",
        ),
        (
            f"gateway (HPA maxReplicas {limits['gateway_max']}, 1 core each)",
            limits["gateway_max"] / p["gateway_cores"],
            "raise maxReplicas; GATEWAY_WORKERS=2 with 2-core pods",
        ),
        (
            f"safety (HPA maxReplicas {limits['safety_max']}, 1 core each)",
            limits["safety_max"] / p["safety_cores"],
            "raise maxReplicas",
        ),
        (
            f"history (HPA maxReplicas {limits['history_max']}, 1 core each)",
            limits["history_max"] / p["history_cores"],
            "raise maxReplicas; every replica writes to the one PostgreSQL primary",
        ),
    ]
    return sorted(rows, key=lambda row: row[1])


# --- the document -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def render(a: Assumptions, m: dict[str, dict[str, Figure]], limits: dict[str, Any]) -> str:
    p = plan(a, m, limits)
    rows = headroom(p, a, m, limits)
    gpu = m["gpu"]
    out = [
        "# Capacity plan",
        "",
        "*Generated by `python scripts/capacity_plan.py` from `bench/results/`, "
        "`deploy/kubernetes/base/` and the gateway's settings; do not edit (a test checks that "
        "it regenerates identically). Change an assumption with the script's options.*",
        "",
        f"Parlance for **{fmt(a.daily_users)} daily users**, sized for the peak hour.",
        "",
        "## Assumptions",
        "",
        "| assumption | value |",
        "|---|---|",
    ]
    out += [f"| {HELP[f.name]} | {getattr(a, f.name):,} |" for f in fields(a)]
    out += [
        "| prompt tokens per request (turn k sends the k−1 earlier exchanges) "
        f"| {fmt(p['prompt_tokens'])} on average |",
        "",
        "## Measured inputs",
        "",
        "| figure | value | from |",
        "|---|---|---|",
        _row("gateway CPU per request", m["overhead"]["gateway_ms"], "ms"),
        _row("gateway CPU per request", m["load"]["gateway_ms"], "ms"),
        _row("safety CPU per request (profanity classifier)", m["overhead"]["safety_ms"], "ms"),
        _row("safety CPU per request (profanity classifier)", m["load"]["safety_ms"], "ms"),
        _row("history CPU per stored exchange", m["load"]["history_ms"], "ms"),
        _row("SQL statements per stored exchange", m["load"]["statements"], ""),
        _row("append latency, SQLite", m["history"]["sqlite_ms"], "ms"),
        _row("append latency, PostgreSQL", m["history"]["postgres_ms"], "ms"),
        _row("Parlance output tokens/s on one GPU", gpu["tok_s"], "tok/s"),
        _row("time to first token at that load", gpu["ttft_ms"], "ms"),
        _row("time per output token at that load", gpu["tpot_ms"], "ms"),
        _row("Redis round trips/s, one gateway client", m["limits"]["incr_per_s"], "ops/s"),
        _row("safety, profanity batched", m["safety"]["profanity"], "texts/s"),
        _row("safety, Detoxify (bert-base size) batched", m["safety"]["detoxify"], "texts/s"),
        _row("PostgreSQL bytes per byte of message text", m["storage"]["factor"], ""),
        "",
        "CPU figures come from the 2-core development machine, shared and noisy "
        "(each file says how); read them as ±30%.",
        "",
    ]
    out += _traffic(p, a) + _sizing(p, a, m) + _limits(p, a, rows, limits) + _unmeasured(a, gpu)
    return "\n".join(out) + "\n"


def _row(what: str, figure: Figure, unit: str) -> str:
    value = f"{figure.value:,.2f}".rstrip("0").rstrip(".")
    return f"| {what} | {f'{value} {unit}'.strip()} | {figure.cite()} |"


def _traffic(p: dict, a: Assumptions) -> list[str]:
    return [
        "## Traffic",
        "",
        f"- Requests a day: {fmt(a.daily_users)} × {a.conversations_per_user:g} × "
        f"{a.turns_per_conversation:g} = **{fmt(p['requests_day'])}**; mean "
        f"{fmt(p['mean_rps'], 1)} req/s, peak **{fmt(p['peak_rps'], 1)} req/s** "
        f"(× {a.peak_to_mean:g}).",
        f"- One streamed answer lasts {p['stream_s']:.1f} s (first token plus "
        f"{a.answer_tokens} × time per token, as measured on the GPU): "
        f"**{fmt(p['peak_streams'])} streams open** at the peak.",
        f"- Output at the peak: **{fmt(p['peak_output_tok_s'])} tokens/s**; prompts average "
        f"{fmt(p['prompt_tokens'])} tokens.",
        "",
    ]


def _sizing(p: dict, a: Assumptions, m: dict) -> list[str]:
    gpu = m["gpu"]
    gfix, gtok = p["gateway_fit"]
    sfix, stok = p["safety_fit"]
    return [
        "## Sizing at the peak",
        "",
        "| component | per unit of work | at the peak | to provision |",
        "|---|---|---|---|",
        f"| gateway | {gfix:.2f} ms + {gtok:.3f} ms/token = {p['gateway_ms']:.1f} ms CPU a "
        f"request | {p['gateway_cores']:.1f} cores at {a.target_utilization:.0%} | "
        f"**{p['gateway_replicas']} pods** of 1 core |",
        f"| safety (profanity) | {sfix:.2f} ms + {stok:.3f} ms/token = {p['safety_ms']:.1f} "
        f"ms CPU a request | {p['safety_cores']:.1f} cores | **{p['safety_replicas']} pods** "
        "of 1 core |",
        f"| generator ({gpu['model'].unit} on {gpu['card'].unit}) | "
        f"{fmt(gpu['tok_s'].value)} output tok/s a GPU | {fmt(p['peak_output_tok_s'])} tok/s "
        f"| **{p['gpus']} GPUs** (one per pod) |",
        f"| history | {m['load']['history_ms'].value:.1f} ms CPU a stored exchange | "
        f"{fmt(p['writes_s'], 1)} exchanges/s | **{p['history_replicas']} pods** of 1 core |",
        f"| PostgreSQL writes | {m['load']['statements'].value:g} statements an exchange | "
        f"**{fmt(p['statements_s'])} statements/s** | one primary |",
        f"| Redis | {p['redis_ops_request']:.1f} commands a request | "
        f"**{fmt(p['redis_ops_s'])} commands/s** | one instance |",
        f"| PostgreSQL storage | {fmt(p['exchange_db_bytes'])} bytes an exchange | "
        f"**{p['db_gb_day']:.1f} GB a day**, {p['db_gb_day'] * 365 / 1000:.1f} TB a year | "
        "see below |",
        f"| history outbox (while history is down) | {fmt(p['outbox_item_bytes'])} bytes an "
        f"exchange | {p['outbox_mb_min']:.0f} MB a minute over all gateways | bridges "
        f"**{p['outbox_minutes']:.1f} min** of outage |",
        "",
        "- Gateway and safety CPU: a straight line through the two measured reply lengths "
        f"({m['overhead']['tokens'].value:g} and {m['load']['load_tokens'].value:g} tokens; "
        "the longer run also stores every exchange), extended to the answer length.",
        f"- With Detoxify instead of the profanity classifier, safety needs about "
        f"{p['detoxify_factor']:.0f}× the CPU (batched texts/s of the two, "
        f"`bench/results/{SAFETY_BENCH}`): ~{p['safety_cores'] * p['detoxify_factor']:.0f} "
        "cores, or GPUs (SAFETY_DEVICE=cuda).",
        f"- Open streams per gateway pod at the peak: {p['streams_per_gateway']:.0f} of "
        f"GATEWAY_MAX_CONCURRENT_REQUESTS={p['max_concurrent']:.0f}.",
        f"- Redis commands per gateway pod at the peak: {p['redis_per_gateway']:.0f}/s, against "
        f"{fmt(m['limits']['incr_per_s'].value)} round trips/s one gateway process's client "
        "managed in the limits benchmark.",
        f"- PostgreSQL append latency ({m['history']['postgres_ms'].value:g} ms, one client) "
        f"with a history replica's {p['history_pool']} connections (HISTORY_DB_POOL_SIZE + "
        f"HISTORY_DB_MAX_OVERFLOW) allows up to ~{fmt(p['appends_per_replica'])} appends/s per "
        f"replica, if the database keeps that latency; the peak needs "
        f"{fmt(p['writes_s'])}/s in all.",
        "",
    ]


def _limits(p: dict, a: Assumptions, rows: list, limits: dict[str, Any]) -> list[str]:
    out = [
        "## Where the deployment's defaults stop",
        "",
        "Capacity of each scaled component at the bounds set in `deploy/kubernetes/base/` "
        "(replicas at the autoscaler's target utilisation), over the peak demand (below 1.0: "
        "too small for this peak):",
        "",
        "| component | capacity / peak | what removes the limit |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {ratio:.2f} | {fix} |" for name, ratio, fix in rows]
    first, ratio, fix = rows[0]
    storage_first = p["pg_volume_days"] < 30
    out += [
        "",
        "## The first bottleneck",
        "",
        f"- **Storage.** The PostgreSQL volume of the base ({limits['pg_volume']}) holds "
        f"**{p['pg_volume_days']:.1f} days** of stored chats at {p['db_gb_day']:.1f} GB a day."
        + (" This is the first limit the stack meets" if storage_first else " After that")
        + ": size the volume for the retention you keep (or use a managed database, "
        "components/external-datastores), and partition the message table by month so that "
        "old months are dropped or archived instead of deleted row by row.",
        f"- **Throughput.** With the default bounds, the first component to run out is the "
        f"{first}: capacity {ratio:.2f}× the peak"
        + (" (enough for this peak)" if ratio >= 1 else " (too small for this peak)")
        + f". {fix[0].upper() + fix[1:]}.",
        f"- **Single instances.** PostgreSQL takes {fmt(p['statements_s'])} write statements/s "
        "and Redis "
        f"{fmt(p['redis_ops_s'])} commands/s at the peak. Neither was measured to its limit here "
        "(the Redis figure above is bound by one Python client, not by Redis); one primary and "
        "one Redis are commonly good for several times these rates. When they are not: Redis "
        "Cluster for the limits and the cache (their keys are per API key, so they shard), and "
        "for history, read replicas for listing and search, then partitioning by user.",
        f"- **History outages.** Each gateway's outbox holds {p['outbox_minutes']:.1f} minutes "
        "of stored exchanges at the peak; past that, requests with store: true get 503 until "
        "history is back. Raise GATEWAY_OUTBOX_MAX_ITEMS (and the gateway's data volume) if "
        "history or PostgreSQL may be down longer.",
        "",
    ]
    return out


def _unmeasured(a: Assumptions, gpu: dict[str, Figure]) -> list[str]:
    return [
        "## What is not measured",
        "",
        f"- The generator figure is for {gpu['model'].unit}, the only model measured, with "
        f"{gpu['input_len'].value:g}-token prompts and {gpu['output_len'].value:g}-token "
        "answers; a production-size model has far fewer tokens/s per GPU, and these prompts "
        "are longer. Measure the model you serve with `bench/vllm_vs_parlance.sh` and rerun "
        "this script with its file.",
        "- Scaling from one GPU to two (issue 21's two-GPU run) is not measured yet: the plan "
        "assumes GPUs add linearly, with round-robin balancing (conversation affinity, which "
        "would raise the prefix-cache hit rate of multi-turn chats, is not built yet).",
        "- Safety is sized with the profanity classifier, the one the load test ran. The "
        "default is now minilm (all-MiniLM-L6-v2 on every text window), whose CPU per request "
        f"is not in `bench/results/{SAFETY_BENCH}` yet: expect far more than profanity's; "
        "size safety from its measured figure before relying on the safety line above.",
        "- Storage was measured without moderation verdicts stored with the messages, and "
        "before autovacuum's long-run bloat.",
        "- Redis and PostgreSQL at their limits; the network between the services.",
        "",
    ]


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Assumptions()
    for f in fields(Assumptions):
        flag = "--" + f.name.replace("_", "-")
        kind = int if isinstance(getattr(defaults, f.name), int) else float
        parser.add_argument(flag, type=kind, default=getattr(defaults, f.name), help=HELP[f.name])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if --out is stale")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    assumptions = Assumptions(**{f.name: getattr(args, f.name) for f in fields(Assumptions)})
    try:
        text = render(assumptions, measured(), manifests())
    except MissingFigure as exc:
        print(f"capacity_plan.py: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is stale: run python scripts/capacity_plan.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
