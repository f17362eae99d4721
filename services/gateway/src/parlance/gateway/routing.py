"""The routing table: which generator targets serve which models, and which one takes a call.

A target is one entry of GATEWAY_GENERATOR_URL (an address, or a DNS name whose addresses gRPC
balances itself). The table holds, per target, whether its health service says SERVING and the
models its last ListModels reported. A call for a model goes to a serving target that lists
it: the one with the fewest calls from this gateway in flight, ties broken round-robin, so
replicas share the traffic and a slow one gets less of it. Pure bookkeeping: the I/O (health
watches, listings, the calls) is GeneratorClient's, in clients/pool.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from parlance.generator.v1 import generator_pb2

# The task names of the API (the proto's enum without its prefix). A generator that predates
# tasks reports UNSPECIFIED: it serves chat models.
TASKS = {
    generator_pb2.MODEL_TASK_UNSPECIFIED: "chat",
    generator_pb2.MODEL_TASK_CHAT: "chat",
    generator_pb2.MODEL_TASK_EMBED: "embed",
    generator_pb2.MODEL_TASK_REWARD: "reward",
}


def task_of(info: generator_pb2.ModelInfo) -> str:
    return TASKS.get(info.task, "chat")


@dataclass(eq=False)
class Target:
    url: str
    # The target's GeneratorTargetClient (typed loosely: this module does no I/O).
    client: Any
    # Health SERVING as last seen (a watch stream keeps it current).
    serving: bool = False
    # What its last ListModels said, by model id, in its order.
    models: dict[str, generator_pb2.ModelInfo] = field(default_factory=dict)
    # Calls from this gateway running on it now.
    in_flight: int = 0
    # Its health has been seen at least once (an answer, or a failed connection).
    seen: bool = False


class RoutingTable:
    def __init__(self, targets: Iterable[Target]) -> None:
        self.targets = list(targets)
        self._turns: dict[str, itertools.count[int]] = {}

    def models(self) -> list[generator_pb2.ModelInfo]:
        """Every model some target lists (serving or not), first listing first."""
        seen: dict[str, generator_pb2.ModelInfo] = {}
        for target in self.targets:
            for model_id, info in target.models.items():
                seen.setdefault(model_id, info)
        return list(seen.values())

    def serving(self, model: str) -> list[Target]:
        """Targets that serve `model` now; "" means any target's first chat model."""
        if not model:
            return [t for t in self.targets if t.serving and self._default_chat(t)]
        return [t for t in self.targets if t.serving and model in t.models]

    @staticmethod
    def _default_chat(target: Target) -> bool:
        return any(task_of(info) == "chat" for info in target.models.values())

    def pick(self, model: str, exclude: Iterable[Target] = ()) -> Target | None:
        """The target for the next call of `model`, None when no serving target is left."""
        excluded = set(exclude)
        candidates = [t for t in self.serving(model) if t not in excluded]
        if not candidates:
            return None
        turn = next(self._turns.setdefault(model, itertools.count()))
        start = turn % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        # min keeps the first of equals: the rotation shares ties out in turn.
        return min(rotated, key=lambda t: t.in_flight)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model: its task and the targets serving it now out of those listing it."""
        result: dict[str, dict[str, Any]] = {}
        for info in self.models():
            listing = [t for t in self.targets if info.id in t.models]
            result[info.id] = {
                "task": task_of(info),
                "targets": len(listing),
                "serving": sum(1 for t in listing if t.serving),
            }
        return result
