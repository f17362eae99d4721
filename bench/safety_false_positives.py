"""False positives of the safety classifiers on ordinary chat, in and out, the way the gateway
moderates them.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_false_positives.py \
        --head head5=minilm_head_5.npz --head head6=minilm_head_6.npz [--out FILE]

Two held-out sets, written by hand and committed before anything scored them (their READMEs):
- bench/data/safety_chat_7/messages.tsv: ordinary user messages. Each is moderated as INPUT the
  way a one-message chat request is: moderation.moderate_input (the gateway's own code) with a
  safety client that calls the safety service's serving object in process (one Classify call per
  message, DIRECTION_INPUT, the service's input thresholds). A content_filter error = refused.
- bench/data/safety_fragments_7/answers.tsv: ordinary assistant answers. Each is streamed through
  the gateway's real StreamModerator (stream_moderation.py: WindowCutter windows from the
  gateway's settings, the lead window, each window classified with the previous one prepended,
  DIRECTION_OUTPUT, a flagged first fragment judged again with the next window) as one token a
  word; a `content_filter` finish = the answer would have been cut.

The classifier runs behind parlance.safety.main.build_serving, as in the service, so the
thresholds per direction are the service's (SAFETY_* environment variables apply; none set: the
classifier's default threshold both ways). profanity-check, the default backend, is the
baseline; --head KEY=PATH adds the minilm backend with a head (as bench/safety_everyday.py).
The input figure is checked against bench/safety_everyday.py's in-process scoring (its
`flagged`, at the classifier's default threshold): the two agree when no threshold is set.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from lib.report import Report, out_argument, table
from safety_everyday import flagged

from parlance.gateway.config import GatewaySettings
from parlance.gateway.errors import APIError
from parlance.gateway.moderation import FinishEvent, moderate_input
from parlance.gateway.stream_moderation import StreamModerator
from parlance.generator.v1 import generator_pb2
from parlance.safety.config import SafetySettings
from parlance.safety.main import build_serving
from parlance.safety.policy import Direction
from parlance.safety.servicer import classify_response_to_proto
from parlance.safety.serving import SafetyServing
from parlance.safety.v1 import safety_pb2

DATA = Path(__file__).parent / "data"
MESSAGES = DATA / "safety_chat_7" / "messages.tsv"
ANSWERS = DATA / "safety_fragments_7" / "answers.tsv"
_DIRECTIONS = {
    safety_pb2.DIRECTION_INPUT: Direction.INPUT,
    safety_pb2.DIRECTION_OUTPUT: Direction.OUTPUT,
}
# A token a word with its leading space, as most BPE vocabularies split English: it decides
# where the lead and the first window close (a word at a time), like a real stream's deltas.
_TOKENS = re.compile(r"\s*\S+")


def read_set(path: Path) -> list[tuple[str, str]]:
    """(kind, text) rows of a held-out set."""
    with path.open(newline="") as f:
        return [
            (row["kind"], row["text"])
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


@dataclass
class InProcessSafety:
    """The gateway's SafetyClient, answered by the service's serving object in this process;
    it records every classified text and its verdict."""

    serving: SafetyServing
    calls: list[tuple[str, safety_pb2.Classification]] = field(default_factory=list)

    async def classify(self, texts: list[str], direction: int) -> safety_pb2.ClassifyResponse:
        # Slots taken before the await: the calls stay in the order the windows were closed
        # (the stream's order), whichever verdict comes back first.
        first = len(self.calls)
        self.calls += [(t, safety_pb2.Classification()) for t in texts]
        result = await self.serving.classify(texts, _DIRECTIONS[direction])
        response = classify_response_to_proto(result)
        for i, verdict in enumerate(response.results):
            self.calls[first + i] = (texts[i], verdict)
        return response


def top(result: safety_pb2.Classification) -> tuple[str, float]:
    """The verdict's flagged category with the highest score (any category when none is)."""
    pool = [c for c in result.categories if c.flagged] or list(result.categories)
    best = max(pool, key=lambda c: c.score)
    return best.category, best.score


async def refused(safety: InProcessSafety, text: str) -> tuple[str, float] | None:
    """(category, score) when input moderation refuses the message, else None."""
    safety.calls.clear()
    try:
        await moderate_input(safety, [text])  # type: ignore[arg-type]
    except APIError as exc:
        if exc.code != "content_filter":
            raise
        return top(safety.calls[0][1])
    return None


async def _stream(text: str) -> AsyncIterator[generator_pb2.GenerateResponse]:
    tokens = _TOKENS.findall(text)
    for i, token in enumerate(tokens):
        final = i == len(tokens) - 1
        delta = generator_pb2.ChoiceDelta(
            index=0,
            text=token,
            token_count=1,
            finish_reason=generator_pb2.FINISH_REASON_STOP if final else 0,
        )
        yield generator_pb2.GenerateResponse(choices=[delta])


@dataclass
class Streamed:
    """What output moderation did to one answer."""

    cut: bool
    windows: int
    # (window number from 1 in stream order, classified text, category, score) of each window
    # that flagged: a flagged first fragment may be released by the next window's verdict, and
    # windows after the one that cut were classified too (the whole answer is generated at once
    # here), though nothing after the cut would have been shown.
    flags: list[tuple[int, str, str, float]]


async def cut(safety: InProcessSafety, settings: GatewaySettings, text: str) -> Streamed:
    """The answer streamed through the gateway's StreamModerator."""
    safety.calls.clear()
    moderator = StreamModerator(safety, settings, n=1)  # type: ignore[arg-type]
    was_cut = False
    async for event in moderator.events(_stream(text)):
        if isinstance(event, FinishEvent) and event.reason == "content_filter":
            was_cut = True
    flags = [(i + 1, t, *top(r)) for i, (t, r) in enumerate(safety.calls) if r.flagged]
    return Streamed(was_cut, len(safety.calls), flags)


async def score_backend(
    settings: SafetySettings,
    gateway: GatewaySettings,
    messages: list[tuple[str, str]],
    answers: list[tuple[str, str]],
) -> tuple[list[tuple[str, float] | None], list[Streamed]]:
    serving = build_serving(settings)
    await serving.start()
    try:
        safety = InProcessSafety(serving)
        inputs = [await refused(safety, text) for _, text in messages]
        outputs = [await cut(safety, gateway, text) for _, text in answers]
    finally:
        await serving.close()
    return inputs, outputs


def shown(path: Path) -> str:
    """A path as the report shows it: from the project root when it is inside."""
    path = path.resolve()
    root = Path(__file__).resolve().parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def cell(text: str) -> str:
    """A text as one markdown table cell."""
    return text.replace("|", "\\|")


def per_kind(rows: list[tuple[str, str]], hit: list[bool]) -> list[list[object]]:
    totals = Counter(kind for kind, _ in rows)
    hits = Counter(kind for (kind, _), h in zip(rows, hit, strict=True) if h)
    return [
        [k, f"{hits[k]} of {n}", f"{100 * hits[k] / n:.1f}%"] for k, n in sorted(totals.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="profanity")
    parser.add_argument("--head", action="append", default=[], metavar="KEY=PATH")
    parser.add_argument("--messages", type=Path, default=MESSAGES)
    parser.add_argument("--answers", type=Path, default=ANSWERS)
    out_argument(parser, "safety_false_positives_7.md")
    args = parser.parse_args()
    # A shared machine: stay behind interactive work (torch threads: SafetySettings, 1).
    os.nice(10)
    messages, answers = read_set(args.messages), read_set(args.answers)
    gateway = GatewaySettings()
    report = Report(
        "False positives of the safety classifiers on ordinary chat (input and streamed output)",
        f"Messages: {len(messages)} ({shown(args.messages)}), each moderated "
        "as the input of a one-message chat request (moderation.moderate_input).",
        f"Answers: {len(answers)} ({shown(args.answers)}), each streamed "
        "one word a token through the gateway's StreamModerator: windows of "
        f"{gateway.moderation_first_window_chars}/{gateway.moderation_window_min_chars}/"
        f"{gateway.moderation_window_max_chars} chars (first/min/max), lead after "
        f"{gateway.moderation_lead_after_ms:g} ms, the previous window prepended.",
        "Thresholds: the safety service's per direction (no SAFETY_*THRESHOLD* set: each "
        "classifier's default threshold, input and output alike).",
        "Both sets are held out: committed before any classifier scored them.",
    )
    runs = [(b, b, None) for b in args.backends.split(",") if b]
    runs += [(key, "minilm", path) for key, _, path in (h.partition("=") for h in args.head)]
    summary = []
    sections: list[tuple[str, list[str]]] = []
    for label, backend, head in runs:
        settings = SafetySettings(classifier=backend, minilm_head_path=head)
        inputs, outputs = asyncio.run(score_backend(settings, gateway, messages, answers))
        in_hits = [r is not None for r in inputs]
        out_hits = [o.cut for o in outputs]
        n_windows = sum(o.windows for o in outputs)
        n_flagged = sum(len(o.flags) for o in outputs)
        everyday = len(flagged(backend, [t for _, t in messages], head))
        n_in, n_out = sum(in_hits), sum(out_hits)
        summary.append(
            [
                label,
                f"{n_in} of {len(messages)}",
                f"{100 * n_in / len(messages):.1f}%",
                everyday,
                f"{n_out} of {len(answers)}",
                f"{100 * n_out / len(answers):.1f}%",
                f"{n_flagged} of {n_windows}",
            ]
        )
        sections.append(
            (
                f"{label}: messages refused per kind",
                table(["kind", "refused", "rate"], per_kind(messages, in_hits)),
            )
        )
        if n_in:
            sections.append(
                (
                    f"{label}: messages refused",
                    table(
                        ["kind", "message", "category", "score"],
                        [
                            [k, cell(t), r[0], f"{r[1]:.3f}"]
                            for (k, t), r in zip(messages, inputs, strict=True)
                            if r is not None
                        ],
                    ),
                )
            )
        sections.append(
            (
                f"{label}: answers cut per kind",
                table(["kind", "cut", "rate"], per_kind(answers, out_hits)),
            )
        )
        windows = [
            [k, "yes" if o.cut else "no", f"{n} of {o.windows}", cell(w), c, f"{sc:.3f}"]
            for (k, _), o in zip(answers, outputs, strict=True)
            for n, w, c, sc in o.flags
        ]
        if windows:
            sections.append(
                (
                    f"{label}: windows that flagged",
                    [
                        "Classified text: the previous window + the window. The answer is cut "
                        "at its first flagged window unless that is a first fragment the next "
                        "window's verdict releases; later windows' flags are listed too.",
                        "",
                        *table(
                            [
                                "kind",
                                "answer cut",
                                "window",
                                "classified text",
                                "category",
                                "score",
                            ],
                            windows,
                        ),
                    ],
                )
            )
    report.section(
        "Summary",
        *table(
            [
                "classifier",
                "messages refused",
                "rate",
                "check: safety_everyday.flagged",
                "answers cut",
                "rate",
                "windows flagged",
            ],
            summary,
        ),
    )
    for heading, lines in sections:
        report.section(heading, *lines)
    report.write(args.out)


if __name__ == "__main__":
    main()
