"""Moderation of the input (before generation) and of the output (while it streams).

Output moderation holds back generated text in windows: the first closes at a word boundary
past `first` characters (time to first token), the others at a sentence end once they have
`min` characters, or at `max` characters. Each closed window is sent to safety at once,
while generation goes on, and its text is released to the client only after it passed. On a
flag the choice ends with `finish_reason: "content_filter"`, none of the flagged window is
sent, and the generation is cancelled once no choice is left to serve. Classification runs
concurrently with generation, so the hold-back costs one classification of the first window
in time to first token and close to nothing per token after it.

Each window is classified together with the window before it, so that a sentence split across
two windows is still seen whole. A flag on the first window, while it is a fragment (a few words
ending mid-sentence, the answer going on: WindowCutter.fragment), does not end the choice yet:
the fragment stays held, and the next window's verdict, which covers both, releases or stops
them (a classifier sees a few words out of context: "Tell me a secret " alone scored self-harm).

Filling the first window takes several tokens (tens of ms each on llama.cpp, ~2 ms on an
H200), and the first token would wait for all of them. So when the first window has waited
`lead_after` seconds (0 by default: at once) and complete words are held, those words go as a
window of their own (the lead), and the first window's rule starts again after them: the first
token then waits for about one word and one classification (bench/results/perf_cpu.md T5,
bench/results/gpu_duel.md).

This module: input moderation, the verdicts history stores, the events of a moderated
generation and the window cutter; the streaming side (StreamModerator) is stream_moderation.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parlance.gateway import errors
from parlance.gateway.clients import SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.metrics import INPUT_CARE, MODERATION_FLAGS
from parlance.gateway.verdicts import to_json, verdict, verdict_json
from parlance.safety.v1 import safety_pb2

log = logging.getLogger(__name__)

SENTENCE_ENDS = ".!?\n。！？"
# Complete words at the start of a text: up to its last whitespace after a non-space.
_COMPLETE_WORDS = re.compile(r"\s*\S.*\s", re.DOTALL)


def _last_sentence_end(text: str) -> int:
    """The index of the last sentence end in `text` (-1: none). A point after a digit ends no
    sentence while a digit follows it or nothing yet ("0.5", "3." mid-stream): a window cut
    there would be judged as "Lower doses (0." with the rest of the number in the next one."""
    for i in range(len(text) - 1, -1, -1):
        if text[i] not in SENTENCE_ENDS:
            continue
        decimal = (
            text[i] == "."
            and i > 0
            and text[i - 1].isdigit()
            and (i + 1 == len(text) or text[i + 1].isdigit())
        )
        if not decimal:
            return i
    return -1


def flagged_categories(result: safety_pb2.Classification) -> list[str]:
    return sorted({c.category for c in result.categories if c.flagged})


async def moderate_input(
    safety: SafetyClient,
    texts: list[str],
    thresholds: Mapping[str, float] | None = None,
    care: Collection[str] = (),
    roles: Sequence[str] | None = None,
) -> InputJudgement:
    """Each text's moderation_json ("" for a blank text, which is not classified); raises 400
    content_filter when any text is flagged outside `care` (safety down: 503, fail closed)."""
    return judge_input(texts, await classify_input(safety, texts), thresholds, care, roles)


async def classify_input(
    safety: SafetyClient, texts: list[str]
) -> safety_pb2.ClassifyResponse | None:
    """Safety's verdicts of the non-blank texts, in order (None when all are blank): the call
    a chat can start before it knows its intent route's thresholds (judge_input applies them)."""
    classified = [t for t in texts if t.strip()]
    if not classified:
        return None
    return await safety.classify(classified, safety_pb2.DIRECTION_INPUT)


def input_flags(
    result: safety_pb2.Classification, thresholds: Mapping[str, float] | None
) -> list[str]:
    """The flagged categories of one verdict: safety's own flags, and the categories whose
    score reaches the threshold an intent route sets. A route only tightens: the user's own
    words choose the route, so a looser one would let them talk their way past moderation."""
    if not thresholds:
        return flagged_categories(result)
    return sorted(
        {
            c.category
            for c in result.categories
            if c.flagged or (c.category in thresholds and c.score >= thresholds[c.category])
        }
    )


def stored_care(moderation_jsons: Iterable[str]) -> list[str]:
    """The categories stored messages were answered with care for (their input verdicts'
    `"action": "care"`, judge_input), so that the conversation keeps the care prompt."""
    found: set[str] = set()
    for text in moderation_jsons:
        if '"care"' not in text:
            continue
        try:
            judged = json.loads(text).get("input", {})
        except (ValueError, AttributeError):
            continue
        if isinstance(judged, dict) and judged.get("action") == "care":
            found.update(judged.get("flagged_categories") or [])
    return sorted(found)


@dataclass(frozen=True)
class InputJudgement:
    """Input moderation's answer: each text's moderation_json, and the flagged categories
    the request is answered with care for (empty: nothing flagged)."""

    verdicts: list[str]
    care: list[str] = field(default_factory=list)


def judge_input(
    texts: list[str],
    verdicts: safety_pb2.ClassifyResponse | None,
    thresholds: Mapping[str, float] | None = None,
    care: Collection[str] = (),
    roles: Sequence[str] | None = None,
) -> InputJudgement:
    """moderate_input's answer from classify_input's verdicts (see moderate_input).

    Care: when every flagged text is a user's message (`roles`, one per text; a system or
    assistant message the client wrote is never cared for) flagged only in categories of
    `care` (the gateway's input_care_categories), the request is not refused: the caller
    answers it with the care prompt. Its flagged texts' verdicts say `"flagged": true` (with the
    categories a route's threshold added, and `"action": "care"`), so that history never
    exports the exchange (history/export.py), the conversation shows what was flagged, and its
    later turns keep the care prompt."""
    if verdicts is None:
        return InputJudgement([""] * len(texts))
    classified = [i for i, t in enumerate(texts) if t.strip()]
    flags = [input_flags(v, thresholds) for v in verdicts.results]
    flagged = [
        v.flagged if not thresholds else bool(f)
        for v, f in zip(verdicts.results, flags, strict=True)
    ]
    found = dict(zip(classified, zip(verdicts.results, flags, flagged, strict=True), strict=True))
    if not any(flagged):
        return InputJudgement(
            [
                verdict_json("input", [found[i][0]], verdicts.model) if i in found else ""
                for i in range(len(texts))
            ]
        )
    categories = sorted({c for f in flags for c in f})
    for category in categories or ["flagged"]:
        MODERATION_FLAGS.labels("input", category).inc()
    # A text flagged with no category named (a classifier's overall flag) is never cared for.
    cared = all(
        f and set(f) <= set(care) and (roles is None or roles[i] == "user")
        for i, (_, f, hit) in found.items()
        if hit
    )
    if not cared:
        log.info("input refused by moderation", extra={"categories": categories})
        raise errors.content_filtered(
            "The response was filtered due to the prompt triggering the content management "
            f"policy ({', '.join(categories) or 'flagged'}). Please modify your prompt and retry."
        )
    for category in categories:
        INPUT_CARE.labels(category).inc()
    log.info("input answered with care", extra={"categories": categories})
    stored = []
    for i in range(len(texts)):
        if i not in found:
            stored.append("")
            continue
        result, text_flags, hit = found[i]
        judged = verdict([result], verdicts.model)
        if hit:
            judged["flagged"] = True
            judged["flagged_categories"] = sorted({*judged["flagged_categories"], *text_flags})
            judged["action"] = "care"
        stored.append(to_json(input=judged))
    return InputJudgement(stored, categories)


# --- Events the serving layer turns into chunks ---------------------------------------------


@dataclass
class TextEvent:
    index: int
    text: str
    token_count: int
    logprobs: list[Any] = field(default_factory=list)


@dataclass
class FinishEvent:
    index: int
    reason: str


@dataclass
class UsageEvent:
    prompt_tokens: int
    completion_tokens: int


Event = TextEvent | FinishEvent | UsageEvent


@dataclass(frozen=True)
class WindowCutter:
    """Where output moderation closes its windows (see the module docstring): pure, so that
    the windows a text makes can be checked without a safety service."""

    first_chars: int
    min_chars: int
    max_chars: int
    enabled: bool = True
    # Seconds the first window may wait before its complete words go as a lead (None: never).
    lead_after: float | None = None

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> WindowCutter:
        return cls(
            first_chars=settings.moderation_first_window_chars,
            min_chars=settings.moderation_window_min_chars,
            max_chars=settings.moderation_window_max_chars,
            enabled=settings.moderate_output,
            lead_after=settings.moderation_lead_after_ms / 1000,
        )

    def lead(self, text: str, waited_s: float) -> str | None:
        """The lead window at the start of the held-back `text` of a choice whose first window
        has not closed and has waited `waited_s`: its complete words (up to the last
        whitespace), if any (None: no lead)."""
        if self.lead_after is None or waited_s < self.lead_after or not self.enabled:
            return None
        match = _COMPLETE_WORDS.match(text)
        return match.group() if match else None

    def cut(self, text: str, first: bool, final: bool) -> str | None:
        """The window to close now at the start of the held-back `text`, if any. `first`: no
        window of this choice closed yet; `final`: the choice's generation ended."""
        if not text:
            return None
        if final or not self.enabled:
            return text
        if first and len(text) >= self.first_chars:
            # The first window is short and closes at a word boundary, not a sentence end:
            # what the client waits for before the first token is this window's generation
            # plus one classification.
            space = text.rfind(" ", self.first_chars // 2)
            if space > 0:
                return text[: space + 1]
        if len(text) >= self.max_chars:
            # Cut at the last space inside the limit, so words are classified whole.
            space = text.rfind(" ", self.min_chars, self.max_chars)
            return text[: space + 1] if space > 0 else text[: self.max_chars]
        if len(text) >= self.min_chars:
            last_end = _last_sentence_end(text)
            if last_end >= self.min_chars - 1:
                return text[: last_end + 1]
        return None

    def fragment(self, window: str, first: bool, final: bool) -> bool:
        """Whether a flag on `window` waits for the next window's verdict: a first (or lead)
        window of a choice that goes on, at most twice the first window's length, not ending a
        sentence. The next window is classified together with it, so the fragment is judged
        again in context instead of a few words cutting the answer; its text is never
        released on its own verdict."""
        stripped = window.rstrip()
        short = 0 < len(stripped) <= 2 * self.first_chars
        return first and not final and short and stripped[-1] not in SENTENCE_ENDS

    def windows(self, deltas: list[str]) -> list[str]:
        """The windows a choice's text makes when it arrives as `deltas`, in order."""
        closed: list[str] = []
        held = ""
        for i, delta in enumerate(deltas):
            held += delta
            final = i == len(deltas) - 1
            while (window := self.cut(held, not closed, final)) is not None:
                closed.append(window)
                held = held[len(window) :]
        return closed
