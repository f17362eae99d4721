"""What streaming output moderation costs in time to first token and time per output token.

    .venv/bin/python bench/moderation_bench.py [--requests 40] [--rounds 6] [--concurrency 8]
        [--tokens-per-s 200] [--out FILE]

One stack of processes (bench/lib/stack.py) with the scripted test
engine streaming a clean multi-sentence text at a fixed token rate, and two gateways on the
same generator, safety and history: A with GATEWAY_MODERATE_OUTPUT=false, B with it true.
Everything else is the same on both (input moderation on, cache bypassed, limits off), so the
ratio B/A is the cost of the output hold-back alone.

Two phases (bench/lib/ttft.py), each interleaved A, B, A, B, ... so that drift of the machine
hits both sides:
- sequential: `--requests` streamed requests per side, one at a time;
- concurrent: `--rounds` rounds of `--concurrency` simultaneous requests per side.
Times are the client's: TTFT from sending the request to the first chunk with content; TPOT
is (last content chunk - first content chunk) / (completion tokens - 1), i.e. the pace at which
text reaches the client after the first token. With moderation on, text arrives in windows
(a sentence at a time), so per-chunk gaps are bursty while the mean pace is what TPOT shows.
"""

from __future__ import annotations

import argparse
import asyncio

from lib.client import ChatResult, chat_body
from lib.report import Report, out_argument, table
from lib.stack import ALICE_KEY, LIMITS_OFF, MODEL, BenchStack, scripted
from lib.stats import percentile
from lib.ttft import Side, compare

from parlance.gateway.config import GatewaySettings

TEXT = (
    "Spring arrives slowly in the mountains. The snow melts first on the southern slopes, "
    "and the streams grow loud with water. Birds return to the valleys and build their nests "
    "in the old oak trees. Farmers walk their fields to see what the winter has left behind. "
    "By the end of April the meadows are green again, and the first flowers open in the sun. "
    "It is the best time of the year for a long walk."
)
BODY = chat_body(
    "Tell me about spring in the mountains.",
    MODEL,
    stream_options={"include_usage": True},
    max_tokens=200,
)
QUIET = "WARNING"


def summary(samples: list[ChatResult]) -> dict[str, float]:
    ttft = [s.ttft_s * 1000 for s in samples if s.ttft_s is not None]
    tpot = [s.tpot_s * 1000 for s in samples if s.tpot_s is not None]
    return {
        "n": len(samples),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "tpot_p50": percentile(tpot, 50),
        "total_p50": percentile([s.total_s * 1000 for s in samples], 50),
        "tokens": percentile([s.completion_tokens for s in samples], 50),
    }


def report(sides: list[Side], args: argparse.Namespace) -> Report:
    off, on = sides
    rows, ratios = [], []
    for phase in ("sequential", "concurrent"):
        a, b = summary(getattr(off, phase)), summary(getattr(on, phase))
        label = "sequential" if phase == "sequential" else f"{args.concurrency} concurrent"
        for name, s in (("off", a), ("on", b)):
            rows.append([label, name, s["n"], f"{s['ttft_p50']:.1f}", f"{s['ttft_p99']:.1f}"])
            rows[-1] += [f"{s['tpot_p50']:.2f}", f"{s['total_p50']:.0f}"]
        ratios.append([label, f"{b['ttft_p50'] / a['ttft_p50']:.2f}"])
        ratios[-1] += [
            f"{b['ttft_p99'] / a['ttft_p99']:.2f}",
            f"{b['tpot_p50'] / a['tpot_p50']:.3f}",
        ]
        ratios[-1] += [f"{b['total_p50'] / a['total_p50']:.3f}"]
    tokens = int(summary(off.sequential)["tokens"])
    seq_off, seq_on = summary(off.sequential), summary(on.sequential)
    # The first window closes at the first word boundary past GATEWAY_MODERATION_FIRST_WINDOW
    # _CHARS characters: it cannot be released before it has been generated, whatever the
    # classifier costs.
    first_chars = GatewaySettings().moderation_first_window_chars
    first_window = TEXT[: TEXT.index(" ", first_chars // 2) + 1]
    while len(first_window) < first_chars:
        first_window = TEXT[: TEXT.index(" ", len(first_window)) + 1]
    first_window_ms = len(first_window.split()) / args.tokens_per_s * 1000
    report = Report(
        "Streaming output moderation: cost in TTFT and TPOT",
        "The stack's four services, two gateways and the client share the machine's cores.",
        f"Engine: scripted, {args.tokens_per_s:g} tokens/s, a clean text of 6 sentences "
        f"({tokens} tokens); safety: the default light classifier; input moderation on for "
        "both sides; windows: the gateway's defaults (GATEWAY_MODERATION_*: the first "
        "closes at a word boundary, then one sentence each).",
        "off: a gateway with GATEWAY_MODERATE_OUTPUT=false; on: a second gateway with "
        "it true, on the same services; requests interleaved off, on, off, on.",
    )
    columns = ["phase", "output moderation", "requests", "TTFT p50", "TTFT p99", "TPOT p50"]
    return report.add(
        "",
        "Client-side times in ms (TTFT: request to the first content chunk; TPOT: mean gap "
        "per token after the first; total: request to the end of the stream).",
        "",
        *table([*columns, "total p50"], rows),
        "",
        "Ratios, on / off:",
        "",
        *table(["phase", "TTFT p50", "TTFT p99", "TPOT p50", "total p50"], ratios),
        "",
        f"Sequential TTFT p50 grows by {seq_on['ttft_p50'] - seq_off['ttft_p50']:.0f} ms. "
        f"Of that, the first window ({len(first_window.split())} tokens, "
        f"{first_window.strip()!r}) "
        f"takes {first_window_ms:.0f} ms to generate at this rate before it can be sent to "
        "safety; the rest is its classification and the hand-over. Later windows are "
        "classified while generation goes on, so TPOT does not grow (client TPOT even "
        "shrinks a little: the first token comes later while the last does not). The "
        "total time grows by about one classification of the last window.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per side")
    parser.add_argument("--rounds", type=int, default=6, help="concurrent rounds per side")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens-per-s", type=float, default=200.0)
    out_argument(parser, "moderation_cost.md")
    args = parser.parse_args()
    gateway = {"GATEWAY_MODERATE_OUTPUT": "false", "GATEWAY_LOG_LEVEL": QUIET, **LIMITS_OFF}
    env = {
        "generator": {**scripted(TEXT, args.tokens_per_s), "GENERATOR_LOG_LEVEL": QUIET},
        "safety": {"SAFETY_LOG_LEVEL": QUIET},
        "history": {"HISTORY_LOG_LEVEL": QUIET},
    }
    with BenchStack(gateway, env, prefix="parlance-modbench-") as stack:
        extra = stack.extra_gateway({"GATEWAY_MODERATE_OUTPUT": "true"})
        urls = {"off": stack.gateway_url, "on": f"http://127.0.0.1:{extra.http_port}"}
        sides = asyncio.run(
            compare(
                urls,
                ALICE_KEY,
                BODY,
                requests=args.requests,
                rounds=args.rounds,
                concurrency=args.concurrency,
            )
        )
    report(sides, args).write(args.out)


if __name__ == "__main__":
    main()
