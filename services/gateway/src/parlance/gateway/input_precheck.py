"""The input pre-check: a copy of safety's classifier in the gateway's process judges a chat's
input as soon as the request is prepared, and when it passes, generation starts beside safety's
round trip instead of after it.

Why: input moderation's round trip to safety (gRPC both ways and the service's batcher, ~2-3.5
ms; bench/results/safety_rtt.md) was the longest wait before the generator was called, a
quarter of what the gateway adds to a lone request's time to first token
(bench/results/gpu_duel.md). profanity-check, the embedded default, is a linear model over word
weights: safety exports its numbers (ExportClassifier) and the copy scores a text in
microseconds with the same code (parlance.common.linear_text).

What does not change: safety's own Classify verdict on the input still decides. Nothing of the
answer is sent, stored or cached before it arrived, a flagged input is still refused and a
safety service that is down or frozen still fails the request closed (503), as before
(chat/generate.py's open_stream awaits the verdict beside the generator's first message, before
anything goes anywhere). The copy only decides whether the generator is called early:
- it passes the input: the generator is called now; a verdict that then refuses the input
  (a copy that disagrees) or fails (safety down) stops that generation at once, before any of
  it left; one that answers it with care starts it again with the care prompt;
- it flags the input, there is no copy, or the input is longer than MAX_CHARS: the request
  waits for the verdict as before, so an input the copy flags never reaches the generator.

The copy is taken in the background once safety answers (the gateway starts without it), is
checked against safety's own scores of CHECK_TEXTS (sent with the export) before it is used,
and is dropped and taken again when a verdict disagrees with it (safety restarted with other
thresholds or another classifier). A classifier safety cannot export (MiniLM, Detoxify)
leaves every input waiting for the verdict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from parlance.common import linear_text_proto
from parlance.gateway.clients.safety import ClassifierNotExportable, SafetyClient
from parlance.gateway.metrics import INPUT_PRECHECK, INPUT_PRECHECK_LOCAL
from parlance.gateway.moderation import input_flags
from parlance.safety.v1 import safety_pb2

log = logging.getLogger(__name__)

# Texts the copy must score as safety does before it is used: insults, charged words used
# harmlessly, ordinary questions, other scripts, a long text.
CHECK_TEXTS = (
    "You are an idiot.",
    "Shut up, you stupid moron.",
    "I hate Mondays.",
    "What does the word bastard mean historically?",
    "how do I kill -9 a process that ignores SIGTERM?",
    "Here is a recipe for pancakes: flour, eggs, milk and a pinch of salt.",
    "¿Cómo estás? 我的账户被锁定了 — naïve café",
    "please proofread: " + "the quick brown fox jumps over the lazy dog, damn it, " * 30,
)
# Scores are compared as Classify reports them (float32 in ClassifyResponse).
SCORE_TOLERANCE = 1e-6
# Waits between attempts to take the copy while safety cannot be asked (it starts later than
# the gateway, or is down): the first quickly, then at most this often.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
# The least time between two copies: a copy dropped for a disagreement is taken again after it.
RETAKE_MIN_S = 5.0
# Inputs longer than this (characters, all texts) wait for safety: the copy scores on the event
# loop, ~40 us per 1,000 characters (2-core AMD EPYC), and a long input's head start is worth
# less than the loop's time for every other request.
MAX_CHARS = 8_000


class ClassifierCopy:
    """safety's exported classifier: its verdicts on input texts, in Classify's shape."""

    def __init__(self, exported: safety_pb2.ExportClassifierResponse) -> None:
        self.model = exported.model
        self.category = exported.category
        self.threshold = exported.input_threshold
        self.linear = linear_text_proto.from_proto(exported.linear)

    def classify(self, texts: Sequence[str]) -> safety_pb2.ClassifyResponse:
        scores = np.clip(self.linear.scores(texts), 0.0, 1.0).tolist() if texts else []
        return verdicts(self.model, self.category, self.threshold, scores)


def verdicts(
    model: str, category: str, threshold: float, scores: Sequence[float]
) -> safety_pb2.ClassifyResponse:
    """Scores of one category as Classify answers them (flagged at `threshold` and above)."""
    return safety_pb2.ClassifyResponse(
        model=model,
        results=[
            safety_pb2.Classification(
                flagged=score >= threshold,
                categories=[
                    safety_pb2.CategoryResult(
                        category=category, score=score, flagged=score >= threshold
                    )
                ],
            )
            for score in scores
        ],
    )


def differences(mine: safety_pb2.ClassifyResponse, theirs: safety_pb2.ClassifyResponse) -> str:
    """What differs between two answers to the same texts ("" when nothing does)."""
    if mine.model != theirs.model:
        return f"model {mine.model!r} vs {theirs.model!r}"
    for index, (a, b) in enumerate(zip(mine.results, theirs.results, strict=True)):
        if a.flagged != b.flagged or len(a.categories) != len(b.categories):
            return f"text {index}: flagged {a.flagged} vs {b.flagged}"
        for x, y in zip(a.categories, b.categories, strict=True):
            if (
                x.category != y.category
                or x.flagged != y.flagged
                or abs(x.score - y.score) > SCORE_TOLERANCE
            ):
                return f"text {index}: {x.category} {x.score:.6f} vs {y.category} {y.score:.6f}"
    return ""


@dataclass(frozen=True)
class Precheck:
    """The copy's judgement of one request's input."""

    passed: bool
    copy: ClassifierCopy
    owner: InputPrecheck

    def disagreed(self) -> None:
        """safety's verdict differed from this judgement."""
        self.owner.disagreed(self)


class InputPrecheck:
    """Holds the copy (None until it is taken and checked) and judges inputs with it."""

    def __init__(self, safety: SafetyClient) -> None:
        self.safety = safety
        self.copy: ClassifierCopy | None = None
        self._taking: asyncio.Task[None] | None = None
        self._last_taken = -RETAKE_MIN_S
        self._closed = False
        INPUT_PRECHECK_LOCAL.set(0)

    def start(self) -> None:
        """Takes the copy in the background (the gateway serves without it meanwhile)."""
        if not self._closed and (self._taking is None or self._taking.done()):
            self._taking = asyncio.create_task(self._take())

    async def close(self) -> None:
        self._closed = True
        if self._taking is not None:
            self._taking.cancel()
            await asyncio.gather(self._taking, return_exceptions=True)
        self.copy = None
        INPUT_PRECHECK_LOCAL.set(0)

    def check(
        self, texts: Sequence[str], thresholds: Mapping[str, float] | None
    ) -> Precheck | None:
        """The copy's judgement: passed when it flags no text (flagged as judge_input flags:
        safety's own threshold, tightened by an intent route's `thresholds`). None, and the
        input waits for safety, without a copy, for an input longer than MAX_CHARS, or when
        the copy fails."""
        copy = self.copy
        classified = [t for t in texts if t.strip()]
        if copy is None or sum(len(t) for t in classified) > MAX_CHARS:
            return None
        try:
            verdicts = copy.classify(classified)
        except Exception:
            # A defect of the copy costs the request its head start, never an error.
            log.exception("input pre-check failed; the input waits for safety's verdict")
            return None
        flagged = any(
            bool(input_flags(v, thresholds)) if thresholds else v.flagged for v in verdicts.results
        )
        INPUT_PRECHECK.labels("flagged" if flagged else "passed").inc()
        return Precheck(not flagged, copy, self)

    def disagreed(self, check: Precheck) -> None:
        """safety's verdict differed from the copy's judgement `check`: that copy is dropped
        (not a newer one taken since) and taken again, at most every RETAKE_MIN_S; requests
        wait for safety meanwhile."""
        if self.copy is not check.copy:
            return
        INPUT_PRECHECK.labels("disagreed").inc()
        log.warning(
            "safety's input verdict differs from the gateway's copy of its classifier; "
            "taking the copy again",
            extra={"copy": "passed" if check.passed else "flagged", "model": check.copy.model},
        )
        self.copy = None
        INPUT_PRECHECK_LOCAL.set(0)
        self.start()

    async def _take(self) -> None:
        # A copy taken again soon after the last one waits: safety replicas that disagree
        # with each other (a rolling restart with new thresholds) must not cost an export per
        # request.
        await asyncio.sleep(max(0.0, self._last_taken + RETAKE_MIN_S - time.monotonic()))
        wait_s = RETRY_FIRST_S
        said_not_exportable = False
        while True:
            try:
                copy = await self._checked_copy()
            except ClassifierNotExportable as exc:
                # MiniLM or Detoxify (or a safety older than ExportClassifier): asked again now
                # and then, in case safety is upgraded or switched to a classifier that can be.
                if not said_not_exportable:
                    log.info("input pre-check off: safety's classifier cannot be copied (%s)", exc)
                    said_not_exportable = True
                await asyncio.sleep(RETRY_MAX_S)
                continue
            except ValueError as exc:
                log.warning("input pre-check: safety's export is not usable (%s)", exc)
            except Exception as exc:
                # Safety not up yet or down: every input waits for its verdict until it is.
                log.debug("input pre-check: no copy yet (%s); again in %.1f s", exc, wait_s)
            else:
                self._last_taken = time.monotonic()
                if copy is not None:
                    self.copy = copy
                    INPUT_PRECHECK_LOCAL.set(1)
                    log.info("input pre-check on", extra={"model": copy.model})
                return
            await asyncio.sleep(wait_s)
            wait_s = min(RETRY_MAX_S, wait_s * 2)

    async def _checked_copy(self) -> ClassifierCopy | None:
        """The copy, if it scores CHECK_TEXTS as safety does (else None, logged)."""
        texts = list(CHECK_TEXTS)
        exported = await self.safety.export_classifier(texts)
        copy = ClassifierCopy(exported)
        theirs = verdicts(
            exported.model, exported.category, exported.input_threshold, exported.check_scores
        )
        if len(theirs.results) != len(texts):
            found = f"{len(theirs.results)} check scores for {len(texts)} texts"
        else:
            found = differences(copy.classify(texts), theirs)
        if found:
            log.warning("input pre-check off: the copy of safety's classifier differs (%s)", found)
            return None
        return copy
