"""Intent routing on the labelled evaluation set: accuracy, macro-F1, fallback rate, confusions,
with and without a context window, and the threshold calibration.

    .venv/bin/python bench/intent_eval.py [--out bench/results/intent_eval.md]
        [--routes services/gateway/src/parlance/gateway/intents/default_routes.yaml]
        [--threads 1] [--deltas minilm_intents_3.npz | none] [--versus none | DELTAS]

The set is bench/data/intents/messages.tsv (README.md there: how it was written). Each message
is classified by the gateway's IntentRouter with the served model, all-MiniLM-L6-v2, loaded in
this process through the generator's own engine class (TransformersEmbeddingEngine), so the
vectors are the ones the Embed RPC returns. Labels: one of the route file's intents, "default"
(matches none: correct only when the router falls back) or "mixed" (two intents in one
message: left out of every figure, listed at the end).

- accuracy: routed to the labelled route (default included) / labelled messages;
- macro-F1: the mean F1 over the intents and default;
- fallback rate: messages routed to default / labelled messages; false fallbacks: in-scope
  messages routed to default / in-scope messages.

Methods: nearest examples (k), centroids, or `logistic` (a softmax regression trained on the
examples when the file loads; its threshold is a probability). --pooling/--dtype pick the
vectors: the gateway's intent model (every layer pooled, float32; the default here) or the
model as /v1/embeddings serves it (--pooling mean --dtype float32).

--deltas (by default the shipped intent encoder, minilm_intents_3.npz: what the shipped route
file's embed_model names) loads the model with a fine-tuned encoder's deltas merged (the
generator's `embed_deltas`): the report is the fine-tuned encoder's, plus a section with the
frozen encoder's headline figures beside it, measured in the same run (and the cost of both,
interleaved). `--deltas none`: the frozen encoder alone. `--versus DELTAS` puts another
fine-tuned encoder in that section in place of the frozen one (intents-2 beside intents-1:
`--deltas minilm_intents_2.npz --versus minilm_intents_1.npz`).

Calibration: accuracy for each threshold from 0.00 to 0.80; the best one is reported with a
2-fold check (threshold chosen on one half, accuracy measured on the other), because the best
threshold on the whole set is optimistic about that set.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "intents" / "messages.tsv"
ROUTES = ROOT / "services/gateway/src/parlance/gateway/intents/default_routes.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.procs import load_average  # noqa: E402
from lib.report import Report, out_argument, table  # noqa: E402

from parlance.gateway.intents import DEFAULT_ROUTE, IntentRouter  # noqa: E402

EMBED = "all-MiniLM-L6-v2"
THRESHOLDS = [round(0.01 * i, 2) for i in range(0, 81)]


@dataclass
class Item:
    intent: str
    context: str
    text: str

    def messages(self) -> list[dict[str, str]]:
        turns = [{"role": "user", "content": self.context}] if self.context else []
        if self.context:
            turns.append({"role": "assistant", "content": "(answer)"})
        return [*turns, {"role": "user", "content": self.text}]


@dataclass
class Scored:
    item: Item
    nearest: str
    score: float
    margin: float
    # The default route's examples were closer than every intent's (default at any threshold).
    out_of_scope: bool = False

    def routed(self, threshold: float) -> str:
        if self.out_of_scope or self.score < threshold:
            return DEFAULT_ROUTE
        return self.nearest


class EngineEmbedder:
    """The IntentRouter's Embedder over the generator's engine, in process."""

    def __init__(self, engine: object) -> None:
        self.engine = engine

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        from parlance.generator.engine.base import EmbeddingRequest

        request = EmbeddingRequest(request_id=uuid.uuid4().hex, inputs=tuple(texts), truncate=True)
        result = await self.engine.embed(request)  # type: ignore[attr-defined]
        return list(result.vectors)


def read_items(path: Path) -> list[Item]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [Item(r["intent"], r["context"] or "", r["text"]) for r in rows]


def check_apart(items: list[Item], router: IntentRouter) -> None:
    """The set must not contain the route file's examples (the figures would be inflated)."""
    spec = router.routes.spec
    examples = {e.casefold() for r in spec.routes for e in [*r.examples, *spec.default.examples]}
    shared = [i.text for i in items if i.text.casefold() in examples]
    if shared:
        raise SystemExit(f"evaluation messages that are route examples: {shared}")


# Query vectors per (context_turns, context_weight): they do not depend on the examples.
_QUERIES: dict[tuple[int, float, int], list[Any]] = {}


async def score_all(router: IntentRouter, items: list[Item]) -> list[Scored]:
    spec = router.routes.spec
    key = (spec.context_turns, spec.context_weight, id(items))
    if key not in _QUERIES:
        _QUERIES[key] = list(
            await asyncio.gather(*(router.query_vector(i.messages()) for i in items))
        )
    scored = []
    for item, vector in zip(items, _QUERIES[key], strict=True):
        match = router.match(vector, threshold=-2.0)
        scored.append(Scored(item, match.nearest, match.score, match.margin, match.fallback))
    return scored


def accuracy(scored: list[Scored], threshold: float) -> float:
    return sum(s.routed(threshold) == s.item.intent for s in scored) / len(scored)


def macro_f1(scored: list[Scored], threshold: float, labels: list[str]) -> float:
    f1s = []
    for label in labels:
        tp = sum(s.routed(threshold) == label == s.item.intent for s in scored)
        predicted = sum(s.routed(threshold) == label for s in scored)
        actual = sum(s.item.intent == label for s in scored)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return statistics.fmean(f1s)


def best_threshold(scored: list[Scored]) -> float:
    """The threshold with the highest accuracy (the middle of a plateau of equals)."""
    values = [accuracy(scored, t) for t in THRESHOLDS]
    top = max(values)
    ties = [t for t, v in zip(THRESHOLDS, values, strict=True) if v == top]
    return ties[len(ties) // 2]


def two_fold(scored: list[Scored]) -> float:
    halves = [scored[0::2], scored[1::2]]
    right = 0
    for train, test in (halves, halves[::-1]):
        threshold = best_threshold(train)
        right += sum(s.routed(threshold) == s.item.intent for s in test)
    return right / len(scored)


@dataclass
class Config:
    label: str
    method: str
    k: int
    center: bool
    out_of_scope: bool  # the default route's examples used
    context_turns: int = 0
    context_weight: float = 0.0
    name_anchors: bool = False  # each route's name one more example (not counted in the 5)

    def settings(self) -> dict[str, object]:
        return {
            "method": self.method,
            "k": self.k,
            "center": self.center,
            "context_turns": self.context_turns,
            "context_weight": self.context_weight,
            "name_anchors": self.name_anchors,
        }


CONFIGS = [
    Config("nearest, k 1", "nearest", 1, False, False),
    Config("nearest, k 2 (last session's method)", "nearest", 2, False, False),
    Config("centroid", "centroid", 1, False, False),
    Config("nearest, k 2, centred", "nearest", 2, True, False),
    Config("nearest, k 2, + default examples", "nearest", 2, False, True),
    Config("nearest, k 2, centred + default examples", "nearest", 2, True, True),
    Config("nearest, k 3, centred + default examples", "nearest", 3, True, True),
    Config("centroid, centred + default examples", "centroid", 1, True, True),
    Config("k 3, centred + default, +1 earlier turn (0.3)", "nearest", 3, True, True, 1, 0.3),
    Config("k 3, centred + default, +1 earlier turn (0.6)", "nearest", 3, True, True, 1, 0.6),
    Config("k 3, centred + default, +2 earlier turns (0.3)", "nearest", 3, True, True, 2, 0.3),
    Config("logistic, + default examples", "logistic", 3, False, True),
    Config("logistic, centred + default examples", "logistic", 3, True, True),
    Config("logistic, centred + default, +1 earlier turn (0.6)", "logistic", 3, True, True, 1, 0.6),
    Config(
        "centroid, centred + default, +1 turn (0.6), + names",
        "centroid",
        3,
        True,
        True,
        1,
        0.6,
        True,
    ),
    # The shipped file's settings (the last row: its confusions are listed below).
    Config(
        "logistic, centred + default, +1 turn (0.6), + names",
        "logistic",
        3,
        True,
        True,
        1,
        0.6,
        True,
    ),
]
DRAWS = 20
PER_ROUTE = 5


def subset(
    router: IntentRouter, config: Config, picks: dict[str, list[str]] | None
) -> IntentRouter:
    """A router with the config's settings over some of the file's examples (None: all)."""
    spec = router.routes.spec
    routes = [
        {**r.model_dump(), "examples": picks[r.name] if picks else r.examples} for r in spec.routes
    ]
    default = spec.default.model_dump()
    if not config.out_of_scope:
        default["examples"] = []
    elif picks is not None:
        default["examples"] = picks[DEFAULT_ROUTE]
    return router.with_settings(routes=routes, default=default, **config.settings())


def picks_of(router: IntentRouter, seed: int | None) -> dict[str, list[str]]:
    """PER_ROUTE examples of each route and of the default route: the file's first ones
    (seed None) or a random draw."""
    spec = router.routes.spec
    pools = {r.name: r.examples for r in spec.routes}
    pools[DEFAULT_ROUTE] = spec.default.examples
    if seed is None:
        return {name: pool[:PER_ROUTE] for name, pool in pools.items()}
    rng = random.Random(seed)
    return {name: rng.sample(pool, min(PER_ROUTE, len(pool))) for name, pool in pools.items()}


def file_examples(router: IntentRouter) -> list[Item]:
    """Every example of the route file as a labelled message (the default route's too)."""
    spec = router.routes.spec
    items = [Item(r.name, "", e) for r in spec.routes for e in r.examples]
    return items + [Item(DEFAULT_ROUTE, "", e) for e in spec.default.examples]


async def held_out(router: IntentRouter, config: Config, examples: list[Item], seed: int) -> float:
    """Accuracy on the route file's examples that a draw of PER_ROUTE left out (no
    threshold: the best intent or the default route's examples win): the development set the
    methods were chosen on, apart from the evaluation set."""
    picks = picks_of(router, seed)
    scored = await score_all(subset(router, config, picks), examples)
    kept = [s for s in scored if s.item.text not in picks[s.item.intent]]
    return accuracy(kept, -2.0)


def figures(scored: list[Scored], threshold: float, labels: list[str]) -> list[str]:
    fallbacks = sum(s.routed(threshold) == DEFAULT_ROUTE for s in scored)
    return [
        f"{threshold:.2f}",
        f"{accuracy(scored, threshold):.3f}",
        f"{macro_f1(scored, threshold, labels):.3f}",
        f"{fallbacks / len(scored):.3f}",
    ]


def follow_ups(scored: list[Scored], threshold: float) -> str:
    with_context = [s for s in scored if s.item.context]
    return f"{accuracy(with_context, threshold):.3f} ({len(with_context)})"


def confusion_section(
    report: Report,
    scored: list[Scored],
    threshold: float,
    labels: list[str],
    name: str = "shipped settings",
) -> None:
    rows: list[list[object]] = []
    for label in labels:
        mine = [s for s in scored if s.item.intent == label]
        wrong = Counter(s.routed(threshold) for s in mine if s.routed(threshold) != label)
        rows.append(
            [
                label,
                len(mine),
                sum(s.routed(threshold) == label for s in mine),
                ", ".join(f"{k} {v}" for k, v in wrong.most_common()) or "-",
            ]
        )
    report.section(
        f"Confusions ({name}, threshold {threshold:.2f})",
        "Per labelled route: messages, routed right, and where the others went.",
        "",
        *table(["label", "messages", "right", "routed instead to"], rows),
    )
    lines = []
    for label in labels:
        routed = [s for s in scored if s.routed(threshold) == label]
        misrouted = [s for s in routed if s.item.intent != label]
        # Up to 5 per route, mistakes first: they say more.
        sample = (misrouted + [s for s in routed if s.item.intent == label])[:5]
        lines += ["", f"**{label}** ({len(routed)} routed here, {len(misrouted)} wrongly):", ""]
        for s in sample:
            mark = "ok" if s.item.intent == label else f"WRONG, labelled {s.item.intent}"
            context = f" [after: {s.item.context!r}]" if s.item.context else ""
            lines.append(
                f"- {s.item.text!r}{context}: score {s.score:.2f}, margin {s.margin:.2f} ({mark})"
            )
    if name == "shipped settings":
        report.section("Five messages per route (shipped settings)", *lines)


def headline(
    cuts: list[tuple[str, list[Scored]]], threshold: float, labels: list[str]
) -> list[str]:
    """Accuracy, macro-F1 and fallback rates at the file's own threshold (nothing chosen on
    this set), for each (examples kept, scored messages)."""
    rows: list[list[object]] = []
    for name, scored in cuts:
        in_scope = [s for s in scored if s.item.intent != DEFAULT_ROUTE]
        false = sum(s.routed(threshold) == DEFAULT_ROUTE for s in in_scope)
        rows.append(
            [
                name,
                *figures(scored, threshold, labels)[1:],
                f"{false / len(in_scope):.3f}",
                follow_ups(scored, threshold),
            ]
        )
    return [
        f"The shipped settings ({CONFIGS[-1].label}) at the route file's threshold "
        f"{threshold:.2f}: nothing chosen on this set. False fallbacks: in-scope messages "
        "sent to the default route.",
        "",
        *table(
            [
                "examples per route",
                "accuracy",
                "macro-F1",
                "fallback rate",
                "false fallbacks",
                "follow-ups",
            ],
            rows,
        ),
    ]


def ceiling(items: list[Item], scored: list[Scored]) -> list[str]:
    """The labelled set's own messages as examples, leave one out (nearest, k 3, no
    threshold: the default label is a class of its examples): how far similarity in this
    embedding space separates these intents at all, with about 39 examples per label."""
    vectors = np.vstack([_QUERIES[(0, 0.0, id(items))][i] for i in range(len(items))])
    labels = np.array([i.intent for i in items])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -9.0)
    names = sorted(set(labels))
    per_label = np.stack(
        [
            np.sort(np.where(labels == n, similarity, -9.0), axis=1)[:, -3:].mean(axis=1)
            for n in names
        ],
        axis=1,
    )
    predicted = np.array(names)[per_label.argmax(axis=1)]
    in_scope = labels != DEFAULT_ROUTE
    return [
        "The set's own messages as the examples, each message classified by the others "
        "(leave one out; nearest, k 3, not centred; the 'default' messages are a class of "
        f"their own): accuracy {(predicted == labels).mean():.3f}, in-scope messages "
        f"{(predicted[in_scope] == labels[in_scope]).mean():.3f}, with about 39 examples per "
        "label written in the same style as the messages: how far nearness alone separates "
        "these intents in this vector space."
    ]


async def classify_cost(router: IntentRouter, items: list[Item], rounds: int) -> list[float]:
    """Seconds per classify() of one message at a time (embedding and match), in process."""
    times = []
    for item in items[:rounds]:
        started = time.perf_counter()
        await router.classify(item.messages())
        times.append(time.perf_counter() - started)
    return times


async def headline_row(router: IntentRouter, items: list[Item], labels: list[str]) -> list[str]:
    """The shipped settings' figures: the first 5 examples per route (accuracy at the best
    threshold, 2-fold, at the file's threshold), the draws' 2-fold mean / min / max, every
    example (2-fold, at the file's threshold), the file's held-out examples, leave one out."""
    config, spec = CONFIGS[-1], router.routes.spec
    first = await score_all(subset(router, config, picks_of(router, None)), items)
    drawn = [
        two_fold(await score_all(subset(router, config, picks_of(router, seed)), items))
        for seed in range(DRAWS)
    ]
    whole = await score_all(subset(router, config, None), items)
    examples = file_examples(router)
    dev = [await held_out(router, config, examples, seed) for seed in range(DRAWS)]
    await score_all(subset(router, CONFIGS[0], None), items)  # the newest messages alone
    return [
        f"{accuracy(first, best_threshold(first)):.3f}",
        f"{two_fold(first):.3f}",
        f"{accuracy(first, spec.threshold):.3f}",
        f"{macro_f1(first, spec.threshold, labels):.3f}",
        f"{statistics.fmean(drawn):.3f} / {min(drawn):.3f} / {max(drawn):.3f}",
        f"{two_fold(whole):.3f}",
        f"{accuracy(whole, spec.threshold):.3f}",
        f"{macro_f1(whole, spec.threshold, labels):.3f}",
        f"{statistics.fmean(dev):.3f}",
        ceiling(items, whole)[0].split("accuracy ")[1].split(",")[0],
    ]


async def versus_frozen(
    report: Report,
    args: argparse.Namespace,
    tuned: IntentRouter,
    items: list[Item],
    labels: list[str],
) -> None:
    """The frozen encoder (same pooling and dtype, no deltas; or --versus's deltas) beside
    the fine-tuned one: the headline figures, and the cost of one classification, the two
    interleaved."""
    engine = await started_engine(args, args.versus)
    other = f"fine-tuned ({engine.deltas_name})" if args.versus else "frozen"
    try:
        frozen = await IntentRouter.load(str(args.routes), EngineEmbedder(engine))
        _QUERIES.clear()
        rows = [[other, *await headline_row(frozen, items, labels)]]
        _QUERIES.clear()
        rows.append([f"fine-tuned ({tuned.embedder.engine.deltas_name})"])  # type: ignore[attr-defined]
        rows[-1] += await headline_row(tuned, items, labels)
        costs: dict[str, list[float]] = {other: [], rows[-1][0]: []}
        for item in items[: args.cost_rounds]:
            for name, router in zip(costs, (frozen, tuned), strict=True):
                costs[name] += await classify_cost(router, [item], 1)
    finally:
        await engine.close()
    threshold = tuned.routes.spec.threshold
    report.section(
        "Frozen vs fine-tuned encoder (same run)"
        if not args.versus
        else "Two fine-tuned encoders (same run)",
        f"The shipped settings ({CONFIGS[-1].label}) over "
        + (f"the deltas {args.versus}" if args.versus else "the frozen all-MiniLM-L6-v2")
        + f" and over the fine-tuned one (--deltas {args.deltas}), the same pooling "
        f"({args.pooling}) and "
        f"dtype. First 5 per route: accuracy at the best threshold, the 2-fold figure, "
        f"accuracy and macro-F1 at the file's threshold {threshold:.2f}; {DRAWS} draws of 5: "
        "the 2-fold figure's mean / min / max; every example of the file: 2-fold, accuracy "
        "and macro-F1 at the file's threshold; the file's held-out examples (5 kept per draw); "
        "leave one out on this set (section 'What the model can do').",
        "",
        *table(
            [
                "encoder",
                "first 5: best",
                "first 5: 2-fold",
                "first 5: at file threshold",
                "first 5: macro-F1",
                f"{DRAWS} draws (2-fold)",
                "all: 2-fold",
                "all: at file threshold",
                "all: macro-F1",
                "held-out file examples",
                "leave one out",
            ],
            rows,
        ),
        "",
        "Cost: classify() of one message at a time in process, the two encoders alternating "
        f"message by message ({len(costs[other])} each, {args.threads} thread(s)): "
        + ", ".join(
            f"{name} p50 {1000 * statistics.median(values):.1f} ms"
            for name, values in costs.items()
        )
        + ". The deltas are merged into the weights at load: the forward pass is the frozen "
        "encoder's, the same matrices and shapes.",
    )


async def started_engine(args: argparse.Namespace, deltas: str | None) -> Any:
    """The embedding engine as the options say, with `deltas` merged (None: the frozen one)."""
    from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine

    engine = TransformersEmbeddingEngine(
        served_model_name=EMBED,
        n_threads=args.threads,
        dtype=args.dtype,
        pooling=args.pooling,
        deltas=deltas,
        runtime=args.runtime,
    )
    await engine.start()
    return engine


async def run(args: argparse.Namespace) -> Report:
    engine = await started_engine(args, args.deltas)
    try:
        router = await IntentRouter.load(str(args.routes), EngineEmbedder(engine))
        every = read_items(args.data)
        check_apart(every, router)
        items = [i for i in every if i.intent != "mixed"]
        mixed = [i for i in every if i.intent == "mixed"]
        names = [r.name for r in router.routes.spec.routes]
        unknown = {i.intent for i in items} - {*names, DEFAULT_ROUTE}
        if unknown:
            raise SystemExit(f"labels that are no route of {args.routes}: {sorted(unknown)}")
        labels = [*names, DEFAULT_ROUTE]
        spec = router.routes.spec
        none = sum(i.intent == DEFAULT_ROUTE for i in items)
        report = Report(
            "Intent routing: the labelled evaluation set",
            f"Route file: `{args.routes.relative_to(ROOT)}` ({len(names)} intents, "
            f"{sum(len(r.examples) for r in spec.routes)} examples; threshold {spec.threshold}, "
            f"method {spec.method}, k {spec.k}, centred {spec.center}, "
            f"{len(spec.default.examples)} out-of-scope examples, "
            f"context_turns {spec.context_turns}, name_anchors {spec.name_anchors}).",
            f"Set: `{args.data.relative_to(ROOT)}`: {len(items)} labelled messages "
            f"({len(items) - none} in scope over "
            f"{len(names)} intents, {none} matching none), "
            f"{sum(bool(i.context) for i in items)} of them follow-ups with an earlier user turn; "
            f"{len(mixed)} mixed-intent messages left out of the figures.",
            f"Model: {EMBED} in process (the generator's TransformersEmbeddingEngine, "
            + (f"fine-tuned: deltas {engine.deltas_name} merged, " if args.deltas else "")
            + f"{args.threads} threads, {args.dtype}: {engine.dtype}, runtime {engine.runtime}, "
            f"pooling {args.pooling!r}: "
            + (
                "every layer's mean-pooled states concatenated)."
                if args.pooling == "layers"
                else "the last layer's mean, as /v1/embeddings serves it)."
            ),
            f"Machine load at the start (1, 5, 15 min): {load_average()} (shared by several "
            "engineers: the cost figures below move with it, the accuracy figures do not).",
        )
        five_rows, whole_rows = [], []
        shipped: list[Scored] = []
        examples = file_examples(router)
        for config in CONFIGS:
            dev = [await held_out(router, config, examples, seed) for seed in range(DRAWS)]
            first = await score_all(subset(router, config, picks_of(router, None)), items)
            cut = best_threshold(first)
            scored_draws = [
                await score_all(subset(router, config, picks_of(router, seed)), items)
                for seed in range(DRAWS)
            ]
            drawn = [two_fold(d) for d in scored_draws]
            # At the file's threshold, chosen without the evaluation set (for the logistic
            # rows: on the file's own examples that a draw left out).
            fixed = [accuracy(d, spec.threshold) for d in scored_draws]
            five_rows.append(
                [
                    config.label,
                    *figures(first, cut, labels),
                    f"{two_fold(first):.3f}",
                    f"{statistics.fmean(drawn):.3f} / {min(drawn):.3f} / {max(drawn):.3f}",
                    f"{accuracy(first, spec.threshold):.3f}",
                    f"{statistics.fmean(fixed):.3f} / {min(fixed):.3f} / {max(fixed):.3f}",
                    follow_ups(first, cut),
                    f"{statistics.fmean(dev):.3f}",
                ]
            )
            whole = await score_all(subset(router, config, None), items)
            whole_rows.append(
                [
                    config.label,
                    *figures(whole, best_threshold(whole), labels),
                    f"{two_fold(whole):.3f}",
                    f"{accuracy(whole, spec.threshold):.3f}",
                    follow_ups(whole, best_threshold(whole)),
                ]
            )
            if config.settings() == {k: getattr(spec, k) for k in config.settings()} and (
                config.out_of_scope == bool(spec.default.examples)
            ):
                shipped = shipped or whole
        if not shipped:
            shipped = await score_all(router, items)
        report.section(
            f"{PER_ROUTE} examples per route (the issue's measure)",
            f"Each route (and the default route, where a configuration uses its examples) "
            f"keeps {PER_ROUTE} of the file's examples: its first {PER_ROUTE}, and "
            f"{DRAWS} random draws. 'threshold': the one with the highest accuracy on the whole "
            "set (optimistic); '2-fold': accuracy with the threshold chosen on the other half "
            "of the set (the honest figure); 'draws': the 2-fold accuracy over the draws, "
            "mean / min / max; 'at file threshold': accuracy at the route file's "
            f"{spec.threshold:.2f} (first 5, and the draws' mean / min / max), no choice made "
            "on this set; 'follow-ups': accuracy on the messages with an earlier user "
            "turn (their count); 'held-out file examples': accuracy on the route file's "
            f"examples each draw left out ({DRAWS} draws' mean, no threshold), the development "
            "set the method, pooling and regularisation were chosen on (the evaluation set "
            "chose nothing; bench/data/intents/messages.tsv has since been used to compare "
            "methods too: a development set). '+ names': each route's name is one more example "
            "of it (name_anchors), beside the 5.",
            "",
            *table(
                [
                    "configuration",
                    "threshold",
                    "accuracy",
                    "macro-F1",
                    "fallback rate",
                    "2-fold",
                    f"{DRAWS} draws (2-fold)",
                    "at file threshold",
                    f"{DRAWS} draws at file threshold",
                    "follow-ups",
                    "held-out file examples",
                ],
                five_rows,
            ),
        )
        report.section(
            "All the file's examples (what the gateway runs)",
            f"Every example of the file ({sum(len(r.examples) for r in spec.routes)} over "
            f"{len(names)} intents, {len(spec.default.examples)} out-of-scope). Columns as "
            f"above; 'at file threshold': accuracy at the file's {spec.threshold:.2f}.",
            "",
            *table(
                [
                    "configuration",
                    "threshold",
                    "accuracy",
                    "macro-F1",
                    "fallback rate",
                    "2-fold",
                    "at file threshold",
                    "follow-ups",
                ],
                whole_rows,
            ),
        )
        first_five = await score_all(subset(router, CONFIGS[-1], picks_of(router, None)), items)
        cuts = [(f"first {PER_ROUTE} (+ the route's name)", first_five), ("all", shipped)]
        report.section(
            "Headline: the shipped settings at the file's threshold",
            *headline(cuts, spec.threshold, labels),
        )
        report.section("What the model can do on this set", *ceiling(items, shipped))
        curve = []
        for threshold in THRESHOLDS[::5]:
            fallbacks = sum(s.routed(threshold) == DEFAULT_ROUTE for s in shipped)
            curve.append(
                [
                    f"{threshold:.2f}",
                    f"{accuracy(shipped, threshold):.3f}",
                    f"{macro_f1(shipped, threshold, labels):.3f}",
                    f"{fallbacks / len(shipped):.3f}",
                ]
            )
        report.section(
            "Threshold calibration (shipped method and context)",
            *table(["threshold", "accuracy", "macro-F1", "fallback rate"], curve),
        )
        confusion_section(report, shipped, spec.threshold, labels)
        five = await score_all(subset(router, CONFIGS[-1], picks_of(router, None)), items)
        confusion_section(
            report,
            five,
            best_threshold(five),
            labels,
            f"{PER_ROUTE} per route, {CONFIGS[-1].label}",
        )
        mixed_scored = await score_all(router, mixed)
        report.section(
            "Mixed-intent messages (not in the figures)",
            *[
                f"- {s.item.text!r}: {s.routed(spec.threshold)} (nearest {s.nearest}, "
                f"score {s.score:.2f}, margin {s.margin:.2f})"
                for s in mixed_scored
            ],
        )
        if args.deltas:
            await versus_frozen(report, args, router, items, labels)
        times = await classify_cost(router, items, args.cost_rounds)
        times.sort()
        report.section(
            "Cost",
            f"classify() of one message at a time in process (one embedding call of one input "
            f"and the match; no gRPC hop): p50 {1000 * times[len(times) // 2]:.1f} ms, "
            f"p90 {1000 * times[int(len(times) * 0.9)]:.1f} ms over {len(times)} messages, "
            f"{args.threads} threads, on a shared machine.",
        )
        return report
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out_argument(parser, "intent_eval.md")
    parser.add_argument("--routes", type=Path, default=ROUTES)
    parser.add_argument("--data", type=Path, default=DATA)
    # 1: as the generator serves it (GENERATOR_EMBED_N_THREADS); faster on a busy machine.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost-rounds", type=int, default=30)
    # The gateway's intent model under make up (scripts/devstack.py): every layer, float32 (run
    # by ONNX Runtime); --pooling mean is all-MiniLM-L6-v2 as /v1/embeddings serves it.
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32")
    parser.add_argument("--pooling", choices=["mean", "layers"], default="layers")
    # The generator's embed_runtime: "onnx-int8" measures what int8 weights cost in accuracy.
    parser.add_argument("--runtime", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto")
    # A fine-tuned encoder's deltas (a file shipped with the generator by name, or a path): by
    # default the intent encoder the shipped route file names (embed_model
    # all-MiniLM-L6-v2-intents-3); "none": the frozen encoder alone.
    parser.add_argument("--deltas", default="minilm_intents_3.npz")
    # What the comparison section puts beside --deltas: "none", the frozen encoder; or
    # another deltas file (two fine-tuned encoders in the same run).
    parser.add_argument("--versus", default="none")
    args = parser.parse_args()
    if args.deltas.lower() == "none":
        args.deltas = None
    if args.versus.lower() == "none":
        args.versus = None
    args.routes = args.routes.resolve()
    args.data = args.data.resolve()
    report = asyncio.run(run(args))
    report.write(args.out)


if __name__ == "__main__":
    main()
