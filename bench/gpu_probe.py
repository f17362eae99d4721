"""The load client of bench/gpu_probe.sh: one client for every arm of the comparison (`vllm serve`
over HTTP, the Parlance generator over gRPC, the gateway over HTTP), so that the arms differ
only in what serves them.

    python3 bench/gpu_probe.py prompts --tokenizer DIR --count 700 --out prompts.json
    python3 bench/gpu_probe.py load --target http://127.0.0.1:8100 --model M --label serve \
        --concurrency 64 --requests 640 --max-tokens 128 --prompts prompts.json --out a.json
    python3 bench/gpu_probe.py load --target grpc://127.0.0.1:50051 ...
    python3 bench/gpu_probe.py summarize --dir RESULTS --out RESULTS/gpu_probe.md

`prompts`: 256 random token ids decoded to text, as `vllm bench serve --dataset-name random`
makes them (with --words, no tokenizer: 250 words, for a dry run on a machine without one).
`load`: a closed loop of `concurrency` streams over `requests` prompts, spread over
`--procs` client processes (a Python client reading ~16k token events per second would be the
limit in one process); every stream asks for exactly `max_tokens` tokens (ignore_eos).
Each process warms its connections first, then all start together. Per request: TTFT (the
first content), TPOT ((last content - first content) / (tokens - 1), tokens from the usage),
the end. Output tok/s: all completion tokens / (last end - first start).
`summarize`: a markdown table of every arm, with ratios to the `vllm serve` arm of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import queue
import random
import time
import uuid
from pathlib import Path
from typing import Any

from lib.stats import PERCENTILE_DEFINITION, percentile

# -- prompts ------------------------------------------------------------------------------------


def make_prompts(args: argparse.Namespace) -> list[str]:
    rng = random.Random(0)
    if args.words:
        vocab = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "light"]
        return [" ".join(rng.choice(vocab) for _ in range(250)) for _ in range(args.count)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    specials = set(tokenizer.all_special_ids)
    ids = [i for i in range(tokenizer.vocab_size) if i not in specials]
    prompts: list[str] = []
    while len(prompts) < args.count:
        text = str(tokenizer.decode([rng.choice(ids) for _ in range(args.input_len)]))
        # The gateway refuses NUL and unpaired surrogates (a 400, by design); vllm serve takes
        # them. Such draws would count as gateway errors (0.6% of the first H200 run's).
        if "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            prompts.append(text)
    return prompts


# -- one stream ---------------------------------------------------------------------------------


def record(
    started: float, ttft: float | None, last: float | None, tokens: int, error: str | None
) -> dict[str, Any]:
    """One request's figures; `ttft` and `last` (content) are seconds from `started`."""
    end = time.perf_counter()
    tpot = (
        (last - ttft) / (tokens - 1)
        if ttft is not None and last is not None and tokens > 1
        else None
    )
    return {
        "start": started,
        "end": end,
        "ttft_ms": None if ttft is None else ttft * 1000,
        "tpot_ms": None if tpot is None else tpot * 1000,
        "tokens": tokens,
        "error": error,
    }


class HttpTarget:
    """An OpenAI-compatible server (`vllm serve`, the gateway), through the benchmarks' one
    HTTP client (lib.client: one keep-alive connection per worker)."""

    def __init__(self, url: str, model: str, api_key: str) -> None:
        from lib.client import ChatClient

        self.client = ChatClient(url, api_key or None, timeout_s=120.0)
        self.model = model

    async def stream(self, prompt: str, max_tokens: int, lane: int) -> dict[str, Any]:
        from lib.client import chat_body

        body = chat_body(
            prompt,
            self.model,
            max_tokens=max_tokens,
            ignore_eos=True,
            stream_options={"include_usage": True},
        )
        r = await self.client.stream(body, lane=lane)
        return record(r.started, r.ttft_s, r.last_content_s, r.completion_tokens, r.error)

    async def aclose(self) -> None:
        await self.client.aclose()


class GrpcTarget:
    """The Parlance generator itself: GeneratorService/Generate, one channel per process (as
    the gateway holds one per target)."""

    def __init__(self, address: str, model: str) -> None:
        import grpc

        from parlance.generator.v1 import generator_pb2_grpc

        self.channel = grpc.aio.insecure_channel(address)
        self.stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)
        self.model = model

    async def stream(self, prompt: str, max_tokens: int, lane: int) -> dict[str, Any]:
        import grpc

        from parlance.generator.v1 import generator_pb2 as pb

        request = pb.GenerateRequest(
            request_id=uuid.uuid4().hex,
            model=self.model,
            chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=prompt)]),
            sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        )
        started = time.perf_counter()
        ttft = last = None
        tokens = 0
        error = None
        try:
            async for reply in self.stub.Generate(request, timeout=120.0):
                now = time.perf_counter() - started
                if any(c.text for c in reply.choices):
                    ttft = now if ttft is None else ttft
                    last = now
                if reply.HasField("usage"):
                    tokens = reply.usage.completion_tokens
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"[:160]
        out = record(started, ttft, last, tokens, error)
        return out

    async def aclose(self) -> None:
        await self.channel.close()


def target_for(args: argparse.Namespace) -> HttpTarget | GrpcTarget:
    if args.target.startswith("grpc://"):
        return GrpcTarget(args.target.removeprefix("grpc://"), args.grpc_model)
    return HttpTarget(args.target, args.model, args.api_key)


# -- the closed loop ----------------------------------------------------------------------------


async def process_loop(
    args: argparse.Namespace, prompts: list[str], workers: int, start_at: float
) -> list[dict[str, Any]]:
    target = target_for(args)
    queue = list(reversed(prompts))
    records: list[dict[str, Any]] = []
    try:
        # Warm-up: each worker's connection (HTTP lane) or the channel, and the server's paths.
        await asyncio.gather(*(target.stream(prompts[0], 2, lane) for lane in range(workers)))
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def worker(lane: int) -> None:
            while queue:
                records.append(await target.stream(queue.pop(), args.max_tokens, lane))

        await asyncio.gather(*(worker(lane) for lane in range(workers)))
    finally:
        await target.aclose()
    return records


def process_main(
    args: argparse.Namespace, prompts: list[str], workers: int, start_at: float, out: Any
) -> None:
    out.put(asyncio.run(process_loop(args, prompts, workers, start_at)))


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    prompts = json.loads(Path(args.prompts).read_text())
    # A tag of its own per request (arm and number) in front of the prompt: every arm reads the
    # same prompt file, and without it a later arm on the same engine found its prompts in the
    # prefix cache (vLLM's default) that an earlier arm had filled, a cheaper prefill than the
    # first arm's on a fresh server (found in the review of the second H200 re-measure).
    prompts = [
        f"[{args.label} {args.order}.{i}] {prompts[i % len(prompts)]}" for i in range(args.requests)
    ]
    procs = max(1, min(args.procs, args.concurrency))
    shares = [
        args.concurrency // procs + (1 if i < args.concurrency % procs else 0) for i in range(procs)
    ]
    # Prompts dealt round-robin, so that each process has work in proportion to its workers.
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + args.warmup_s
    children = []
    dealt = [prompts[i::procs] for i in range(procs)]
    for share, part in zip(shares, dealt, strict=True):
        child = context.Process(target=process_main, args=(args, part, share, start_at, results))
        child.start()
        children.append(child)
    records: list[dict[str, Any]] = []
    lost = 0
    for _ in children:
        try:
            records.extend(results.get(timeout=args.timeout_s))
        except queue.Empty:  # a client process died or hung: its requests count as lost
            lost += 1
    for child in children:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    return summarize_records(args, records) | {"lost_client_processes": lost}


def summarize_records(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if not r["error"]]
    errors = [r["error"] for r in records if r["error"]]
    ttft = [r["ttft_ms"] for r in ok if r["ttft_ms"] is not None]
    tpot = [r["tpot_ms"] for r in ok if r["tpot_ms"] is not None]
    span = (max(r["end"] for r in ok) - min(r["start"] for r in ok)) if ok else math.nan
    tokens = sum(r["tokens"] for r in ok)
    return {
        "label": args.label,
        "target": args.target,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "procs": args.procs,
        "ok": len(ok),
        "errors": len(errors),
        "first_errors": errors[:3],
        "short": sum(1 for r in ok if r["tokens"] != args.max_tokens),
        "duration_s": span,
        "output_tok_s": tokens / span if span and span > 0 else math.nan,
        "req_s": len(ok) / span if span and span > 0 else math.nan,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "tpot_p50_ms": percentile(tpot, 50),
        "tpot_p99_ms": percentile(tpot, 99),
    }


# -- the summary --------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float, base: float | None) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "-"
    return f"{value / base:.2f}"


HEADER = (
    "| arm | c | ok/err | output tok/s | ratio | TTFT p50 ms | +ms vs serve | TTFT p99 "
    "| TPOT p50 ms | ratio | TPOT p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: dict[str, Any], b: dict[str, Any] | None) -> str:
    """One arm's line; ratios (and the TTFT added) against `vllm serve`'s arm `b`."""
    cells = [
        r["label"],
        str(r["concurrency"]),
        f"{r['ok']}/{r['errors']}",
        fmt(r["output_tok_s"], 0),
        ratio(r["output_tok_s"], b and b["output_tok_s"]),
        fmt(r["ttft_p50_ms"]),
        "-" if not b else fmt(r["ttft_p50_ms"] - b["ttft_p50_ms"]),
        fmt(r["ttft_p99_ms"]),
        fmt(r["tpot_p50_ms"], 2),
        ratio(r["tpot_p50_ms"], b and b["tpot_p50_ms"]),
        fmt(r["tpot_p99_ms"], 2),
    ]
    return "| " + " | ".join(cells) + " |"


def client_check(folder: Path, ours: dict[int, dict[str, Any]]) -> list[str]:
    """`vllm bench serve`'s figures (vbench_*.json) beside our client's for `vllm serve`.

    vLLM's own client against serve and against the gateway: its ratios do not depend on our
    client, and its serve figure says whether our client limited serve's arm (ours lower).
    """
    results = []
    for path in sorted(folder.glob("vbench_*.json")):
        data = json.loads(path.read_text())
        label = path.stem.split("_", 2)[2].rsplit("_c", 1)[0]
        results.append((label, int(data.get("max_concurrency") or 0), data))
    if not results:
        return []
    serve = {c: d for label, c, d in results if label == "serve"}
    lines = [
        "",
        "Client check: `vllm bench serve` (vLLM's client: random dataset, 256 input / 128 output "
        "tokens, ignore_eos), medians as vLLM reports them; `ours` is this script's client "
        "against `vllm serve` at the same concurrency.",
        "",
        "| arm (vllm bench serve) | c | completed/failed | output tok/s | ratio to serve "
        "| TTFT p50 ms | +ms vs serve | TPOT p50 ms | ours: serve tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c, d in results:
        b = serve.get(c)
        mine = ours.get(c)
        cells = [
            label,
            str(c),
            f"{d.get('completed', '?')}/{d.get('failed', 0)}",
            fmt(d.get("output_throughput"), 0),
            ratio(d.get("output_throughput", math.nan), b and b.get("output_throughput")),
            fmt(d.get("median_ttft_ms")),
            "-" if not b else fmt(d["median_ttft_ms"] - b["median_ttft_ms"]),
            fmt(d.get("median_tpot_ms"), 2),
            fmt(mine["output_tok_s"], 0) if mine and label == "serve" else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summarize(args: argparse.Namespace) -> str:
    folder = Path(args.dir)
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("load_*.json"))]
    runs.sort(key=lambda r: r.get("order", 0))
    base = {r["concurrency"]: r for r in runs if r["label"] == "serve"}
    card = folder / "card.txt"
    lines = [
        "# GPU probe: `vllm serve` vs the Parlance generator (gRPC) vs the gateway, one call",
        "",
        f"Card: {card.read_text().strip() if card.exists() else '?'}. One load client for "
        "every arm (bench/gpu_probe.py: closed loop, random-token prompts of 256 ids decoded, "
        "ignore_eos, spread over client processes). Ratios are to `vllm serve` at the same "
        f"concurrency in this run. Percentiles: {PERCENTILE_DEFINITION}.",
        "",
        HEADER,
        *(row(r, base.get(r["concurrency"])) for r in runs),
    ]
    lines += client_check(folder, base)
    errors = [
        f"- {r['label']} c={r['concurrency']}: {r['first_errors']}" for r in runs if r["errors"]
    ]
    if errors:
        lines += ["", "Errors (first three per arm):", *errors]
    lines += run_files(folder)
    return "\n".join(lines) + "\n"


def run_files(folder: Path) -> list[str]:
    """The servers' logged settings and the load at the start and end, as report sections."""
    lines: list[str] = []
    for name, title in (
        ("engine_configs.txt", "Engine settings as each server logged them"),
        ("uptime_start.txt", "Load average at the start"),
        ("uptime_end.txt", "Load average at the end"),
    ):
        if (folder / name).exists():
            lines += ["", f"{title}:", "", "```", (folder / name).read_text().strip(), "```"]
    return lines


# -- command line -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prompts")
    p.add_argument("--tokenizer", default="")
    p.add_argument("--words", action="store_true", help="250-word prompts, no tokenizer")
    p.add_argument("--count", type=int, default=700)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--out", required=True)
    load = commands.add_parser("load")
    load.add_argument("--target", required=True, help="http://host:port or grpc://host:port")
    load.add_argument("--model", default="", help="the model name HTTP requests carry")
    load.add_argument(
        "--grpc-model", default="", help="the model gRPC requests carry ('': default)"
    )
    load.add_argument("--api-key", default="")
    load.add_argument("--label", required=True)
    load.add_argument("--order", type=int, default=0, help="its place in the summary")
    load.add_argument("--round", type=int, default=0, help="its round (bench/gpu_duel.sh)")
    load.add_argument("--concurrency", type=int, default=1)
    load.add_argument("--requests", type=int, default=40)
    load.add_argument("--max-tokens", type=int, default=128)
    load.add_argument("--procs", type=int, default=1)
    load.add_argument("--warmup-s", type=float, default=3.0, help="time for the processes to start")
    load.add_argument("--timeout-s", type=float, default=150.0)
    load.add_argument("--prompts", required=True)
    load.add_argument("--out", required=True)
    s = commands.add_parser("summarize")
    s.add_argument("--dir", required=True)
    s.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "prompts":
        Path(args.out).write_text(json.dumps(make_prompts(args)))
    elif args.command == "load":
        result = run_load(args) | {"order": args.order, "round": args.round}
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(
            f"  {args.label:>24} c={args.concurrency:<3} ok {result['ok']} err {result['errors']} "
            f"short {result['short']}  {fmt(result['output_tok_s'], 0)} tok/s  TTFT p50 "
            f"{fmt(result['ttft_p50_ms'])} ms  TPOT p50 {fmt(result['tpot_p50_ms'], 2)} ms"
            + (f"  errors: {result['first_errors']}" if result["errors"] else "")
        )
    else:
        text = summarize(args)
        Path(args.out).write_text(text)
        print(text)


if __name__ == "__main__":
    main()
