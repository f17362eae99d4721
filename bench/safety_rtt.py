"""Where a lone input-moderation call's time goes (issue 20: on the H200 host the gateway's
`moderation` stage was 3.5 ms at c=1, the largest share of what the gateway adds, while
profanity-check scores such a prompt in ~1 ms).

Layers, measured in one run with the calls interleaved (one per path in turn, so drift hits
each alike), the same texts for every path:

    in-process     SafetyServing.classify in this process: the batcher's thread hop, the
                   score, the policy (no gRPC)
    echo           a bare grpc.aio server in another process answering an empty response:
                   the gRPC floor
    servicer       the service's servicer and serving on a bare grpc.aio server (no health,
                   reflection or interceptors) in another process
    service        `python -m parlance.safety.main`, as deployed (interceptors, health, the
                   per-call log line)
    gateway        the gateway's SafetyClient (its call batching, deadline, metrics) against
                   `service`

    .venv/bin/python bench/safety_rtt.py --calls 400 --out bench/results/safety_rtt.md
    python3 bench/safety_rtt.py --prompts RESULTS/prompts.json    # gpu_probe.py's prompts

Texts: the prompts file's texts (gpu_probe.py's random-token prompts: ~1,800 characters), or
twelve sentences of bench/lib/texts.py each. Percentiles: bench/lib/stats.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
for service in ("common", "safety", "gateway"):
    sys.path.insert(0, str(ROOT / "services" / service / "src"))

from lib.stats import PERCENTILE_DEFINITION, percentile  # noqa: E402

from parlance.safety.v1 import safety_pb2, safety_pb2_grpc  # noqa: E402

ECHO_PORT, SERVICER_PORT, SERVICE_PORT = 18161, 18162, 18163


async def _echo_server(port: int) -> None:
    class Echo(safety_pb2_grpc.SafetyServiceServicer):
        async def Classify(self, request: Any, context: Any) -> Any:
            return safety_pb2.ClassifyResponse()

    server = grpc.aio.server()
    safety_pb2_grpc.add_SafetyServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _servicer_server(port: int, classifier: str) -> None:
    from parlance.safety.config import SafetySettings
    from parlance.safety.main import build_serving
    from parlance.safety.servicer import SafetyServicer

    serving = build_serving(SafetySettings(classifier=classifier))
    await serving.start()
    server = grpc.aio.server()
    safety_pb2_grpc.add_SafetyServiceServicer_to_server(SafetyServicer(serving), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _texts(args: argparse.Namespace) -> list[str]:
    if args.prompts:
        return list(json.loads(Path(args.prompts).read_text()))[:200]
    from lib.texts import sentences

    return [" ".join(sentences(12, offset=12 * i)) for i in range(200)]


async def _wait_ready(name: str, stub: Any, text: str) -> None:
    error = None
    for _ in range(120):
        try:
            request = safety_pb2.ClassifyRequest(texts=[text], direction=safety_pb2.DIRECTION_INPUT)
            await stub.Classify(request, timeout=2.0)
            return
        except grpc.aio.AioRpcError as exc:
            error = exc
            await asyncio.sleep(0.25)
    raise RuntimeError(f"{name} did not answer: {error}")


async def measure(args: argparse.Namespace, texts: list[str]) -> dict[str, list[float]]:
    from parlance.gateway.clients.safety import SafetyClient
    from parlance.safety.config import SafetySettings
    from parlance.safety.main import build_serving
    from parlance.safety.policy import Direction

    serving = build_serving(SafetySettings(classifier=args.classifier))
    await serving.start()
    channels = {
        name: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        for name, port in (
            ("echo", ECHO_PORT),
            ("servicer", SERVICER_PORT),
            ("service", SERVICE_PORT),
        )
    }
    stubs = {name: safety_pb2_grpc.SafetyServiceStub(ch) for name, ch in channels.items()}
    for name, stub in stubs.items():
        await _wait_ready(name, stub, texts[0])
    gateway = SafetyClient(f"127.0.0.1:{SERVICE_PORT}", timeout_s=5.0, retry_after_s=1)
    direction = safety_pb2.DIRECTION_INPUT

    async def one(name: str, text: str) -> None:
        if name == "in-process":
            await serving.classify([text], Direction("input"))
        elif name == "gateway":
            await gateway.classify([text], direction)
        else:
            await stubs[name].Classify(
                safety_pb2.ClassifyRequest(texts=[text], direction=direction), timeout=5.0
            )

    paths = ["in-process", "echo", "servicer", "service", "gateway"]
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(args.calls + args.warmup):
        order = paths[i % len(paths) :] + paths[: i % len(paths)]
        for name in order:
            started = time.perf_counter()
            await one(name, texts[i % len(texts)])
            if i >= args.warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    await gateway.close()
    for ch in channels.values():
        await ch.close()
    await serving.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--classifier", default="profanity")
    parser.add_argument("--prompts", default="")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", choices=("echo", "servicer"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "echo":
        asyncio.run(_echo_server(args.port))
        return
    if args.serve == "servicer":
        asyncio.run(_servicer_server(args.port, args.classifier))
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "env": env}
    me = [sys.executable, __file__, "--classifier", args.classifier]
    servers = [
        subprocess.Popen([*me, "--serve", "echo", "--port", str(ECHO_PORT)], **quiet),
        subprocess.Popen([*me, "--serve", "servicer", "--port", str(SERVICER_PORT)], **quiet),
        subprocess.Popen(
            [sys.executable, "-m", "parlance.safety.main"],
            **quiet
            | {
                "env": env
                | {
                    "SAFETY_CLASSIFIER": args.classifier,
                    "SAFETY_HOST": "127.0.0.1",
                    "SAFETY_PORT": str(SERVICE_PORT),
                    "SAFETY_METRICS_PORT": "-1",
                }
            },
        ),
    ]
    try:
        texts = _texts(args)
        times = asyncio.run(measure(args, texts))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=20)
    chars = sum(len(t) for t in texts) / len(texts)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        "# A lone Classify call, layer by layer (bench/safety_rtt.py)",
        "",
        f"- Command: `{' '.join(sys.argv)}`",
        f"- Machine: {os.cpu_count()} CPUs; load average {load}.",
        f"- Classifier {args.classifier}; {len(texts)} texts of {chars:.0f} characters on "
        f"average; {args.calls} calls a path, interleaved. Percentiles: {PERCENTILE_DEFINITION}.",
        "",
        "| path | p50 ms | p90 ms |",
        "|---|---:|---:|",
        *(
            f"| {name} | {percentile(v, 50):.3f} | {percentile(v, 90):.3f} |"
            for name, v in times.items()
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
