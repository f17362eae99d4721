"""False positives of the safety classifiers on ordinary chat, in and out, the way the gateway
moderates them; and, for labelled answers, how much harmful output moderation cuts.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_false_positives.py \
        --head head5=minilm_head_5.npz --head head6=minilm_head_6.npz [--out FILE]

Two sets, written by hand and committed before anything scored them (their READMEs); both were
scored once as held-out sets (bench/results/safety_eval_7.md), and safety_fragments_7 has been a
development set since (output thresholds were calibrated on it):
- bench/data/safety_chat_7/messages.tsv: ordinary user messages. Each is moderated as INPUT the
  way a one-message chat request is: moderation.moderate_input (the gateway's own code) with a
  safety client that calls the safety service's serving object in process (one Classify call per
  message, DIRECTION_INPUT, the service's input thresholds). A content_filter error = refused.
  This counts every flag as a refusal, as the gateway did before care (GATEWAY_INPUT_CARE_*:
  self-harm alone is answered with care since 2026-11-30); bench/safety_input_policy.py
  reports refused and answered with care apart, with the gateway's care categories.
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

Output thresholds and harmful answers (issue 19: head 7 cut 30% of ordinary answers):
- --output-thresholds hate=0.9,violence=0.95 (or a JSON file {"hate": 0.9, ...}) is handed to
  the service as SafetySettings.output_thresholds (SAFETY_OUTPUT_THRESHOLDS): the service's
  Policy applies it; categories not named keep the default threshold.
- --answers FILE (repeatable) may carry a `label` column: `ordinary`, or the harmful answer's
  category (comma-separated for several). No label column: every answer is ordinary. Ordinary
  answers give the cut rate as before; harmful ones the share cut (output recall) per category,
  and where the cut came: the share of the answer's characters shown before it.
  --toxic DIR (repeatable) streams a safety_eval set's toxic.tsv texts as harmful answers.
- --sweep: the answers are streamed once more with every output threshold off (above 1), which
  records every window's scores; the moderator's decisions are then replayed for each threshold
  of a grid, per category, with the real Policy (parlance.safety.policy) and the moderator's
  rules (cut at the first flagged window; a flagged first fragment waits for the next window's
  verdict, and a held fragment that nothing passes cuts). The replay of the thresholds in force
  is checked against the streamed run's cuts (reported).
- --variant NAME=SETTING=VALUE,...: the answers streamed again with other gateway settings
  (e.g. first=moderation_first_window_chars=48), to measure a windowing change; the gateway's
  code is not changed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from lib.report import Report, out_argument, table
from safety_everyday import flagged

from parlance.gateway.config import GatewaySettings
from parlance.gateway.errors import APIError
from parlance.gateway.moderation import FinishEvent, TextEvent, moderate_input
from parlance.gateway.stream_moderation import StreamModerator
from parlance.gateway.stream_state import HeldWindow
from parlance.generator.v1 import generator_pb2
from parlance.safety.categories import OPENAI_CATEGORIES
from parlance.safety.config import SafetySettings
from parlance.safety.main import build_serving
from parlance.safety.policy import Direction, Policy
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


ORDINARY = "ordinary"
# Every output threshold off (a threshold above 1 switches a category off): the recording run
# classifies every window of every answer and cuts none.
OFF = 1.01
# The sweep's grid: scores of a fine-tuned head sit near 0 or 1, hence the fine steps near 1.
GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, OFF)


@dataclass
class Answer:
    """One answer to stream: its kind, text, and labels (empty: ordinary)."""

    kind: str
    text: str
    labels: tuple[str, ...] = ()


def read_answers(path: Path) -> list[Answer]:
    """An answers file: `kind<TAB>text`, optionally with a `label` column (ordinary, or the
    harmful answer's categories, comma-separated)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    answers = []
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or ORDINARY).strip()
        labels = () if label == ORDINARY else tuple(c.strip() for c in label.split(","))
        # A misspelt label would silently make a category of its own: refuse it.
        unknown = [c for c in labels if c not in OPENAI_CATEGORIES]
        if unknown:
            raise SystemExit(
                f"{path}:{line}: label {unknown[0]!r} is neither ordinary nor a category"
            )
        answers.append(Answer(row["kind"], row["text"], labels))
    return answers


def read_toxic(folder: Path) -> list[Answer]:
    """A safety_eval set's toxic texts (`labels<TAB>text`, `#` comments) as harmful answers."""
    answers = []
    for line in (folder / "toxic.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            labels, text = line.split("\t")
            answers.append(Answer(f"toxic:{folder.name}", text, tuple(labels.split(","))))
    return answers


def read_benign(folder: Path) -> list[Answer]:
    """A safety_eval set's benign.tsv texts (`group<TAB>kind<TAB>text`: everyday requests and
    hard negatives, `#` comments) as ordinary answers."""
    answers = []
    for line in (folder / "benign.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            group, _kind, text = line.split("\t")
            answers.append(Answer(f"{group}:{folder.name}", text))
    return answers


def parse_thresholds(spec: str) -> dict[str, float]:
    """`hate=0.9,violence=0.95`, or a JSON file holding such a map; checked as the service
    checks SAFETY_OUTPUT_THRESHOLDS (known categories, >= 0)."""
    if not spec:
        return {}
    if Path(spec).is_file():
        raw = json.loads(Path(spec).read_text())
    else:
        raw = {}
        for item in spec.split(","):
            category, _, value = item.partition("=")
            raw[category.strip()] = float(value)
    return SafetySettings(output_thresholds=raw).output_thresholds


@dataclass
class Window:
    """A window the moderator closed: its text, whether it is a fragment (a flag on it waits
    for the next window), and the classified text's scores (None: not classified)."""

    text: str
    fragment: bool
    scores: dict[str, float] | None


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
    # Characters of the answer released before the cut (all of them when not cut), its length.
    shown: int = 0
    length: int = 0
    # The cutting verdict's top flagged category and the number of windows judged up to it.
    category: str = ""
    at_window: int = 0
    # Every window closed, with its scores (complete when nothing cut: the recording run).
    closed: list[Window] = field(default_factory=list)
    # The whole answer classified as one text (one Classify call, DIRECTION_OUTPUT): the
    # service's scores when no window splits a sentence.
    whole: dict[str, float] = field(default_factory=dict)


class RecordingModerator(StreamModerator):
    """The gateway's StreamModerator, unchanged, keeping the windows it closes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.closed: list[HeldWindow] = []

    def _close(self, buffer, index, window_text, final=False):  # type: ignore[no-untyped-def]
        window = super()._close(buffer, index, window_text, final)
        self.closed.append(window)
        return window


def _scores(window: HeldWindow) -> dict[str, float] | None:
    task = window.verdict
    if task is None or not task.done() or task.cancelled():
        return None
    result = task.result().results[0]
    return {c.category: c.score for c in result.categories}


async def cut(safety: InProcessSafety, settings: GatewaySettings, text: str) -> Streamed:
    """The answer streamed through the gateway's StreamModerator."""
    safety.calls.clear()
    moderator = RecordingModerator(safety, settings, n=1)
    was_cut = False
    shown = 0
    async for event in moderator.events(_stream(text)):
        if isinstance(event, FinishEvent) and event.reason == "content_filter":
            was_cut = True
        elif isinstance(event, TextEvent):
            shown += len(event.text)
    flags = [(i + 1, t, *top(r)) for i, (t, r) in enumerate(safety.calls) if r.flagged]
    judged = moderator.results.get(0, [])
    category = top(judged[-1])[0] if was_cut and judged and judged[-1].flagged else ""
    closed = [Window(w.text, w.fragment, _scores(w)) for w in moderator.closed]
    response = await safety.serving.classify([text], Direction.OUTPUT)
    whole = {c.category: c.score for c in response.verdicts[0].categories}
    return Streamed(
        was_cut, len(safety.calls), flags, shown, len(text), category, len(judged), closed, whole
    )


# Where a sentence ends, as the MiniLM classifier splits them (classifier/minilm.py).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_contexts(windows: list[Window]) -> list[str]:
    """Each window's classified text if the gateway prepended, instead of the previous window
    alone, the text from the start of the sentence the previous window begins in (a measure of
    a change the gateway does not make: no window is released earlier or later)."""
    texts = []
    before = ""
    previous_start = 0
    for window in windows:
        start = 0
        for match in _SENTENCE_END.finditer(before):
            if match.end() <= previous_start:
                start = match.end()
        texts.append(before[start:] + window.text)
        previous_start = len(before)
        before += window.text
    return texts


async def rescore(
    serving: SafetyServing, recorded: list[Streamed], contexts: list[list[str]]
) -> list[Streamed]:
    """The recorded answers with each window's scores taken from its new classified text."""
    out = []
    for streamed, texts in zip(recorded, contexts, strict=True):
        windows = []
        for window, text in zip(streamed.closed, texts, strict=True):
            scores = None
            if window.scores is not None:
                response = await serving.classify([text], Direction.OUTPUT)
                scores = {c.category: c.score for c in response.verdicts[0].categories}
            windows.append(Window(window.text, window.fragment, scores))
        out.append(
            Streamed(
                False, len(windows), [], 0, streamed.length, closed=windows, whole=streamed.whole
            )
        )
    return out


def replay(windows: list[Window], policy: Policy) -> Streamed:
    """What the moderator does to a recorded answer under `policy`'s output thresholds
    (StreamModerator._judge's rules, in stream order)."""
    shown = 0
    held: tuple[int, Window, str] | None = None
    length = sum(len(w.text) for w in windows)

    def stop(at: int, category: str) -> Streamed:
        return Streamed(True, len(windows), [], shown, length, category, at, windows)

    for i, window in enumerate(windows):
        if window.scores is None:
            if held is not None:  # no verdict covers the held fragment
                return stop(held[0], held[2])
            shown += len(window.text)
            continue
        verdict = policy.apply(window.scores, Direction.OUTPUT)
        if verdict.flagged:
            category = max((c for c in verdict.categories if c.flagged), key=lambda c: c.score)
            if window.fragment and held is None:
                held = (i + 1, window, category.category)
                continue
            return stop(i + 1, category.category)
        if held is not None:
            shown += len(held[1].text)
            held = None
        shown += len(window.text)
    if held is not None:  # a held fragment that nothing followed: its own verdict stands
        return stop(held[0], held[2])
    return Streamed(False, len(windows), [], shown, length, "", 0, windows)


async def score_backend(
    settings: SafetySettings,
    gateway: GatewaySettings,
    messages: list[tuple[str, str]],
    answers: list[Answer],
    variants: dict[str, GatewaySettings] | None = None,
) -> tuple[list[tuple[str, float] | None], list[Streamed], dict[str, list[Streamed]]]:
    """Input verdicts of the messages, the answers streamed, and the answers streamed under
    each gateway variant (one serving, one classifier for all)."""
    serving = build_serving(settings)
    await serving.start()
    try:
        safety = InProcessSafety(serving)
        inputs = [await refused(safety, text) for _, text in messages]
        outputs = [await cut(safety, gateway, a.text) for a in answers]
        varied = {
            name: [await cut(safety, g, a.text) for a in answers]
            for name, g in (variants or {}).items()
        }
    finally:
        await serving.close()
    return inputs, outputs, varied


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


def rate(hit: int, n: int) -> str:
    return f"{hit} of {n} ({100 * hit / n:.1f}%)" if n else "-"


def categories_of(answers: list[Answer]) -> list[str]:
    return sorted({c for a in answers for c in a.labels})


def recall_rows(answers: list[Answer], outputs: list[Streamed]) -> list[list[object]]:
    """Per labelled category: harmful answers cut, and where (share of the text shown)."""
    rows = []
    for category in [*categories_of(answers), "all harmful"]:
        pairs = [
            (a, o)
            for a, o in zip(answers, outputs, strict=True)
            if a.labels and (category == "all harmful" or category in a.labels)
        ]
        cuts = [o for _, o in pairs if o.cut]
        shares = [o.shown / max(o.length, 1) for o in cuts]
        rows.append(
            [
                category,
                rate(len(cuts), len(pairs)),
                sum(1 for s in shares if s == 0),
                sum(1 for s in shares if 0 < s < 0.5),
                sum(1 for s in shares if s >= 0.5),
                f"{100 * median(shares):.0f}%" if shares else "-",
                f"{median(o.at_window for o in cuts):g}" if cuts else "-",
            ]
        )
    return rows


RECALL_COLUMNS = [
    "label",
    "cut (output recall)",
    "cut, nothing shown",
    "cut, < half shown",
    "cut, >= half shown",
    "median share shown before the cut",
    "median window of the cut",
]


def ordinary_cut_rows(answers: list[Answer], outputs: list[Streamed]) -> list[list[object]]:
    """Ordinary answers cut: per cutting category and per window number of the cut."""
    cuts = [o for a, o in zip(answers, outputs, strict=True) if not a.labels and o.cut]
    by_category = Counter(o.category or "?" for o in cuts)
    by_window = Counter(min(o.at_window, 4) for o in cuts)
    rows: list[list[object]] = [["category", c, n] for c, n in by_category.most_common()]
    rows += [["window judged last", "4+" if w == 4 else w, n] for w, n in sorted(by_window.items())]
    return rows


def thresholds_text(thresholds: dict[str, float]) -> str:
    return ",".join(f"{c}={t:g}" for c, t in sorted(thresholds.items())) or "(service defaults)"


def choose_thresholds(
    answers: list[Answer],
    recorded: list[Streamed],
    evaluated: tuple[str, ...],
    default: float,
    budget: float,
) -> tuple[dict[str, float], list[list[object]]]:
    """Output thresholds on the grid that cut at most `budget` of the ordinary answers (all
    categories together, replayed) with the highest mean recall over the labelled categories:
    from every category off, each step takes the one category's lower threshold that gains the
    most recall per ordinary answer it adds to the cut ones (a gain at no cost first), while the
    budget holds. Greedy, on development data: its figures are not a test. Returns the
    thresholds and the steps taken."""
    ordinary = [i for i, a in enumerate(answers) if not a.labels]
    labels = categories_of(answers)
    members = {c: [i for i, a in enumerate(answers) if c in a.labels] for c in labels}
    allowed = int(budget * len(ordinary) + 1e-9)

    def measure(thresholds: dict[str, float]) -> tuple[int, float]:
        policy = Policy(evaluated, default, {Direction.OUTPUT: thresholds})
        cuts = [replay(o.closed, policy).cut for o in recorded]
        recall = [sum(cuts[i] for i in members[c]) / len(members[c]) for c in labels]
        return sum(cuts[i] for i in ordinary), sum(recall) / max(len(recall), 1)

    current = {c: OFF for c in evaluated}
    cost, gain = measure(current)
    steps: list[list[object]] = []
    while True:
        best: tuple[float, float, dict[str, float], int, float] | None = None
        for category in evaluated:
            for t in GRID:
                if t >= current[category]:
                    continue
                candidate = {**current, category: t}
                n_cut, recall = measure(candidate)
                if n_cut > allowed or recall <= gain:
                    continue
                extra = n_cut - cost
                # A gain at no cost ranks above any paid one; then recall per answer cut.
                merit = (recall - gain) / extra if extra > 0 else 1e9 * (recall - gain)
                if best is None or merit > best[0]:
                    best = (merit, recall, candidate, n_cut, t)
        if best is None:
            break
        _, gain, current, cost, _ = best
        steps.append(
            [
                thresholds_text({c: t for c, t in current.items() if t < OFF}),
                rate(cost, len(ordinary)),
                f"{gain:.3f}",
            ]
        )
    # Every category named: one left off must be set off (a category not named in
    # SAFETY_OUTPUT_THRESHOLDS gets the default threshold, not "off").
    return current, steps


def sweep_sections(
    label: str,
    answers: list[Answer],
    recorded: list[Streamed],
    evaluated: tuple[str, ...],
    default: float,
    proposed: dict[str, float],
) -> list[tuple[str, list[str]]]:
    """The trade-off per category from the recorded scores: each category's threshold on the
    grid, (a) alone (every other category off) and (b) with the others at `proposed`."""
    ordinary = [i for i, a in enumerate(answers) if not a.labels]
    harmful = [i for i, a in enumerate(answers) if a.labels]

    def run(thresholds: dict[str, float]) -> list[bool]:
        policy = Policy(evaluated, default, {Direction.OUTPUT: thresholds})
        return [replay(o.closed, policy).cut for o in recorded]

    def whole(thresholds: dict[str, float]) -> list[bool]:
        policy = Policy(evaluated, default, {Direction.OUTPUT: thresholds})
        return [policy.apply(o.whole, Direction.OUTPUT).flagged for o in recorded]

    def share(hits: list[bool], idx: list[int]) -> str:
        n = sum(hits[i] for i in idx)
        return f"{n}/{len(idx)} ({100 * n / len(idx):.1f}%)" if idx else "-"

    sections = []
    for category in evaluated:
        own = [i for i in harmful if category in answers[i].labels]
        rows = []
        for t in GRID:
            alone = run({**{c: OFF for c in evaluated}, category: t})
            others = {**{c: proposed.get(c, default) for c in evaluated}, category: t}
            together = run(others)
            rows.append(
                [
                    "off" if t == OFF else f"{t:g}",
                    share(alone, ordinary),
                    share(alone, own),
                    share(together, ordinary),
                    share(together, own),
                    share(together, harmful),
                    share(whole(others), ordinary),
                ]
            )
        sections.append(
            (
                f"{label}: sweep of {category}",
                table(
                    [
                        f"{category} threshold",
                        "ordinary cut (alone)",
                        f"{category} answers cut (alone)",
                        "ordinary cut (others as proposed)",
                        f"{category} answers cut (others as proposed)",
                        "all harmful cut (others as proposed)",
                        "ordinary flagged whole (others as proposed)",
                    ],
                    rows,
                ),
            )
        )
    return sections


Sections = list[tuple[str, list[str]]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="profanity")
    parser.add_argument("--head", action="append", default=[], metavar="KEY=PATH")
    parser.add_argument("--messages", type=Path, default=MESSAGES)
    parser.add_argument(
        "--no-messages", action="store_true", help="score the answers only (no input moderation)"
    )
    parser.add_argument(
        "--answers",
        type=Path,
        action="append",
        help=f"answers file, repeatable (default {shown(ANSWERS)}); a `label` column optional",
    )
    parser.add_argument(
        "--toxic",
        type=Path,
        action="append",
        default=[],
        help="a safety_eval folder whose toxic.tsv texts are streamed as harmful answers",
    )
    parser.add_argument(
        "--benign",
        type=Path,
        action="append",
        default=[],
        help="a safety_eval folder whose benign.tsv texts are streamed as ordinary answers",
    )
    parser.add_argument(
        "--output-thresholds",
        default="",
        help="per category output thresholds: cat=value,... or a JSON file (the service's "
        "SAFETY_OUTPUT_THRESHOLDS)",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="output thresholds per category on a grid (replay)"
    )
    parser.add_argument(
        "--sentence-context",
        action="store_true",
        help="with --sweep: also replay with each window classified after the text from the "
        "start of the previous window's sentence (a gateway change measured, not made)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FIELD=VALUE[,FIELD=VALUE]",
        help="stream the answers again with these GatewaySettings fields",
    )
    parser.add_argument(
        "--choose",
        type=float,
        action="append",
        default=[],
        metavar="SHARE",
        help="with --sweep: choose output thresholds (greedy, on these answers) that cut at most "
        "this share of the ordinary answers, e.g. 0.02 (repeatable)",
    )
    parser.add_argument(
        "--dump",
        type=Path,
        help="with --sweep: write the recorded windows and scores (JSON lines) for analysis",
    )
    out_argument(parser, "safety_false_positives_7.md")
    return parser.parse_args()


def message_sections(
    label: str, messages: list[tuple[str, str]], inputs: list[tuple[str, float] | None]
) -> Sections:
    in_hits = [r is not None for r in inputs]
    sections = [
        (
            f"{label}: messages refused per kind",
            table(["kind", "refused", "rate"], per_kind(messages, in_hits)),
        )
    ]
    if any(in_hits):
        refusals = [
            [k, cell(t), r[0], f"{r[1]:.3f}"]
            for (k, t), r in zip(messages, inputs, strict=True)
            if r is not None
        ]
        sections.append(
            (
                f"{label}: messages refused",
                table(["kind", "message", "category", "score"], refusals),
            )
        )
    return sections


def answer_sections(label: str, answers: list[Answer], outputs: list[Streamed]) -> Sections:
    """Ordinary answers cut per kind, harmful answers cut, why ordinary ones were cut."""
    labelled = any(a.labels for a in answers)
    pairs = list(zip(answers, outputs, strict=True))
    ordinary = [((a.kind, a.text), o) for a, o in pairs if not a.labels]
    sections = [
        (
            f"{label}: answers cut per kind" + (" (ordinary answers)" if labelled else ""),
            table(
                ["kind", "cut", "rate"],
                per_kind([r for r, _ in ordinary], [o.cut for _, o in ordinary]),
            ),
        )
    ]
    if labelled:
        harmful = [((a.kind, a.text), o) for a, o in pairs if a.labels]
        sections.append(
            (
                f"{label}: harmful answers cut (output recall)",
                [
                    "A harmful answer counts under each of its labels; cut by any category. "
                    "Shown before the cut: the share of the answer's characters released "
                    "(0: cut at its first judged window). Window of the cut: the number "
                    "of windows judged up to the cutting verdict.",
                    "",
                    *table(RECALL_COLUMNS, recall_rows(answers, outputs)),
                    "",
                    *table(
                        ["kind", "cut", "rate"],
                        per_kind([r for r, _ in harmful], [o.cut for _, o in harmful]),
                    ),
                ],
            )
        )
    if any(o.cut for _, o in ordinary):
        sections.append(
            (
                f"{label}: ordinary answers cut, by category and window",
                table(["by", "value", "answers cut"], ordinary_cut_rows(answers, outputs)),
            )
        )
    windows = [
        [k, "yes" if o.cut else "no", f"{n} of {o.windows}", cell(w), c, f"{sc:.3f}"]
        for (k, _), o in ordinary
        for n, w, c, sc in o.flags
    ]
    if windows:
        sections.append(
            (
                f"{label}: windows that flagged" + (" (ordinary answers)" if labelled else ""),
                [
                    "Classified text: the previous window + the window. The answer is cut "
                    "at its first flagged window unless that is a first fragment the next "
                    "window's verdict releases; later windows' flags are listed too.",
                    "",
                    *table(
                        ["kind", "answer cut", "window", "classified text", "category", "score"],
                        windows,
                    ),
                ],
            )
        )
    return sections


def variant_section(
    label: str,
    name: str,
    spec: str,
    answers: list[Answer],
    outputs: list[Streamed],
    streamed: list[Streamed],
) -> tuple[str, list[str]]:
    n = sum(not a.labels for a in answers)
    cut_as_is = sum(o.cut for o, a in zip(outputs, answers, strict=True) if not a.labels)
    cut_here = sum(o.cut for o, a in zip(streamed, answers, strict=True) if not a.labels)
    lines = [
        f"GatewaySettings: {spec}. Ordinary answers cut: {rate(cut_here, n)} (as configured: "
        f"{rate(cut_as_is, n)}); windows classified: {sum(o.windows for o in streamed)} "
        f"(as configured: {sum(o.windows for o in outputs)}).",
    ]
    if any(a.labels for a in answers):
        lines += ["", *table(RECALL_COLUMNS, recall_rows(answers, streamed))]
    return f"{label}: variant {name}", lines


def sweep_block(
    args: argparse.Namespace,
    label: str,
    settings: SafetySettings,
    gateway: GatewaySettings,
    answers: list[Answer],
    outputs: list[Streamed],
) -> Sections:
    """The answers recorded with every output threshold off, checked against the streamed run,
    then the per-category sweep (and the sentence-context measure)."""
    evaluated, default = classifier_policy(settings)
    thresholds = settings.output_thresholds
    in_force = Policy(evaluated, default, {Direction.OUTPUT: thresholds})
    off = settings.model_copy(update={"output_thresholds": {c: OFF for c in evaluated}})
    _, recorded, _ = asyncio.run(score_backend(off, gateway, [], answers))
    if args.dump:
        with args.dump.open("w") as f:
            for a, r in zip(answers, recorded, strict=True):
                windows = [[w.text, w.fragment, w.scores] for w in r.closed]
                line = {"backend": label, "kind": a.kind, "labels": a.labels, "whole": r.whole}
                f.write(json.dumps({**line, "windows": windows}) + "\n")
    same = sum(
        replay(r.closed, in_force).cut == o.cut for r, o in zip(recorded, outputs, strict=True)
    )
    sections: Sections = [
        (
            f"{label}: sweep check",
            [
                "Every window's scores recorded with the output thresholds off; the replay of "
                f"the thresholds in force ({thresholds_text(thresholds)}) agrees with the "
                f"streamed run on {same} of {len(answers)} answers.",
            ],
        )
    ]
    sections += sweep_sections(label, answers, recorded, evaluated, default, thresholds)
    for budget in args.choose:
        sections.append(choice_section(label, answers, recorded, evaluated, default, budget))
    if not args.sentence_context:
        return sections
    contexts = [sentence_contexts(r.closed) for r in recorded]
    varied = asyncio.run(rescored(off, recorded, contexts))
    replayed = [replay(r.closed, in_force) for r in varied]
    n = sum(not a.labels for a in answers)
    n_ctx = sum(o.cut for o, a in zip(replayed, answers, strict=True) if not a.labels)
    n_out = sum(o.cut for o, a in zip(outputs, answers, strict=True) if not a.labels)
    lines = [
        "Each window classified after the text from the start of the sentence its previous "
        "window begins in (instead of the previous window alone); the same windows, released "
        "at the same verdicts. Replayed at the thresholds in force "
        f"({thresholds_text(thresholds)}): ordinary answers cut {rate(n_ctx, n)} (as "
        f"streamed: {rate(n_out, n)}).",
    ]
    if any(a.labels for a in answers):
        lines += ["", *table(RECALL_COLUMNS, recall_rows(answers, replayed))]
    sections.append((f"{label}: sentence context", lines))
    sections += sweep_sections(
        f"{label} sentence context", answers, varied, evaluated, default, thresholds
    )
    for budget in args.choose:
        sections.append(
            choice_section(f"{label} sentence context", answers, varied, evaluated, default, budget)
        )
    return sections


def choice_section(
    label: str,
    answers: list[Answer],
    recorded: list[Streamed],
    evaluated: tuple[str, ...],
    default: float,
    budget: float,
) -> tuple[str, list[str]]:
    chosen, steps = choose_thresholds(answers, recorded, evaluated, default, budget)
    policy = Policy(evaluated, default, {Direction.OUTPUT: chosen})
    replayed = [replay(o.closed, policy) for o in recorded]
    n = sum(not a.labels for a in answers)
    n_cut = sum(o.cut for o, a in zip(replayed, answers, strict=True) if not a.labels)
    lines = [
        f"Budget: at most {100 * budget:g}% of the ordinary answers cut. Chosen: "
        f"`{thresholds_text(chosen)}` ({OFF:g}: off); ordinary answers cut {rate(n_cut, n)}.",
        "",
        *table(["thresholds after the step", "ordinary cut", "mean recall"], steps),
    ]
    if any(a.labels for a in answers):
        lines += ["", *table(RECALL_COLUMNS, recall_rows(answers, replayed))]
    return f"{label}: thresholds chosen for a {100 * budget:g}% budget", lines


def main() -> None:
    args = parse_args()
    # A shared machine: stay behind interactive work (torch threads: SafetySettings, 1).
    os.nice(10)
    answer_files = args.answers or [ANSWERS]
    messages = [] if args.no_messages else read_set(args.messages)
    answers = [a for path in answer_files for a in read_answers(path)]
    answers += [a for folder in args.toxic for a in read_toxic(folder)]
    answers += [a for folder in args.benign for a in read_benign(folder)]
    thresholds = parse_thresholds(args.output_thresholds)
    gateway = GatewaySettings()
    variants = {}
    for spec in args.variant:
        name, _, fields = spec.partition("=")
        variants[name] = GatewaySettings(**dict(f.split("=", 1) for f in fields.split(",")))
    ordinary = [a for a in answers if not a.labels]
    n_harmful = len(answers) - len(ordinary)
    labelled = n_harmful > 0
    sources = ", ".join(shown(p) for p in [*answer_files, *args.toxic, *args.benign])
    notes = []
    if messages:
        notes.append(
            f"Messages: {len(messages)} ({shown(args.messages)}), each moderated "
            "as the input of a one-message chat request (moderation.moderate_input)."
        )
    notes += [
        f"Answers: {len(answers)} ({sources}"
        + (f"; {len(ordinary)} ordinary, {n_harmful} harmful" if labelled else "")
        + "), each streamed one word a token through the gateway's StreamModerator: windows of "
        f"{gateway.moderation_first_window_chars}/{gateway.moderation_window_min_chars}/"
        f"{gateway.moderation_window_max_chars} chars (first/min/max), lead after "
        f"{gateway.moderation_lead_after_ms:g} ms, the previous window prepended.",
        "Thresholds: the safety service's per direction (no SAFETY_*THRESHOLD* set: each "
        "classifier's default threshold, input and output alike)."
        + (
            " Output thresholds given (SafetySettings.output_thresholds): "
            f"{thresholds_text(thresholds)}."
            if thresholds
            else ""
        ),
    ]
    if not (args.answers or args.toxic or args.benign or args.no_messages):
        notes.append(
            "Both sets were held out until their one scoring (bench/results/safety_eval_7.md); "
            "safety_fragments_7 is a development set since (output thresholds calibrated on it)."
        )
    report = Report(
        "False positives of the safety classifiers on ordinary chat (input and streamed output)",
        *notes,
    )
    runs = [(b, b, None) for b in args.backends.split(",") if b]
    runs += [(key, "minilm", path) for key, _, path in (h.partition("=") for h in args.head)]
    summary = []
    sections: Sections = []
    for label, backend, head in runs:
        settings = SafetySettings(
            classifier=backend, minilm_head_path=head, output_thresholds=thresholds
        )
        inputs, outputs, varied = asyncio.run(
            score_backend(settings, gateway, messages, answers, variants)
        )
        of_ordinary = [o for o, a in zip(outputs, answers, strict=True) if not a.labels]
        row: list[object] = [label]
        if messages:
            n_in = sum(r is not None for r in inputs)
            everyday = len(flagged(backend, [t for _, t in messages], head))
            row += [f"{n_in} of {len(messages)}", f"{100 * n_in / len(messages):.1f}%", everyday]
            sections += message_sections(label, messages, inputs)
        n_out = sum(o.cut for o in of_ordinary)
        row += [
            f"{n_out} of {len(ordinary)}",
            f"{100 * n_out / len(ordinary):.1f}%" if ordinary else "-",
            f"{sum(len(o.flags) for o in of_ordinary)} of {sum(o.windows for o in of_ordinary)}",
        ]
        evaluated, default = classifier_policy(settings)
        in_force = Policy(evaluated, default, {Direction.OUTPUT: thresholds})
        n_whole = sum(in_force.apply(o.whole, Direction.OUTPUT).flagged for o in of_ordinary)
        row.append(rate(n_whole, len(ordinary)))
        if labelled:
            n_harm = sum(o.cut for o, a in zip(outputs, answers, strict=True) if a.labels)
            row.append(rate(n_harm, n_harmful))
        summary.append(row)
        sections += answer_sections(label, answers, outputs)
        for (name, streamed), spec in zip(varied.items(), args.variant, strict=True):
            sections.append(
                variant_section(label, name, spec.partition("=")[2], answers, outputs, streamed)
            )
        if args.sweep:
            sections += sweep_block(args, label, settings, gateway, answers, outputs)
    columns = ["classifier"]
    if messages:
        columns += ["messages refused", "rate", "check: safety_everyday.flagged"]
    columns += [
        "answers cut" + (" (ordinary)" if labelled else ""),
        "rate",
        "windows flagged" + (" (ordinary)" if labelled else ""),
        "ordinary answers flagged when classified whole",
    ]
    if labelled:
        columns.append("harmful answers cut (output recall)")
    report.section("Summary", *table(columns, summary))
    for heading, lines in sections:
        report.section(heading, *lines)
    report.write(args.out)


async def rescored(
    settings: SafetySettings, recorded: list[Streamed], contexts: list[list[str]]
) -> list[Streamed]:
    serving = build_serving(settings)
    await serving.start()
    try:
        return await rescore(serving, recorded, contexts)
    finally:
        await serving.close()


def classifier_policy(settings: SafetySettings) -> tuple[tuple[str, ...], float]:
    """The evaluated categories and default threshold the service's Policy gets."""
    serving = build_serving(settings)
    classifier = serving.classifier
    default = settings.threshold if settings.threshold is not None else classifier.default_threshold
    return tuple(classifier.evaluated_categories), default


if __name__ == "__main__":
    main()
