"""The routing table: which generator targets serve which models, and which one takes a call.

A target is one entry of GATEWAY_GENERATOR_URL (an address, or a DNS name whose addresses gRPC
balances itself). The table holds, per target, whether its health service says SERVING and the
models its last ListModels reported. A call for a model goes to a serving target that lists
it: the one with the fewest calls from this gateway in flight, ties broken round-robin, so
replicas share the traffic and a slow one gets less of it. Pure bookkeeping: the I/O (health
watches, listings, the calls) is GeneratorClient's, in clients/pool.py.

Conversation affinity (GATEWAY_GENERATOR_ROUTING=affinity) keeps the turns of one conversation
on one replica, whose prefix cache still holds their shared history: a call with an affinity
key goes to the target that rendezvous hashing ranks first for that key (every gateway worker
and every gateway ranks alike, with no shared state, and a target leaving moves only its own
conversations), unless that target is over its share of the calls in flight: then to the next
in the key's ranking that is not ("consistent hashing with bounded loads", Mirrokni, Thorup and
Zadimoghaddam, 2018). The bound is ceil((1 + load_factor) * (calls in flight + 1) / targets)
plus AFFINITY_SLACK calls, so no replica carries much more than its share, whatever the keys;
the slack keeps light loads from scattering conversations (a replica batches many calls at
once, so a few more in flight cost it little, while a lost prefix cache costs a prefill).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from parlance.generator.v1 import generator_pb2

# Calls a replica may carry beyond its bounded-load share before a conversation leaves it.
AFFINITY_SLACK = 4

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


def conversation_key(request: generator_pb2.GenerateRequest) -> str:
    """What the turns of one conversation share: the model and the messages up to the first
    user message (the system prompt and the opening question), which every later turn resends
    unchanged. A digest of it, so that clients need no conversation id and no text is kept."""
    opening = []
    for message in request.chat.messages:
        opening.append(f"{message.role}\x00{message.content}")
        if message.role == "user":
            break
    text = "\x01".join([request.model, *opening])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def rendezvous_rank(key: str, targets: Iterable[Target]) -> list[Target]:
    """The targets in the key's order of preference (highest random weight first): a stable
    hash of (key, target), so every process ranks them alike."""

    def weight(target: Target) -> bytes:
        return hashlib.blake2b(f"{key}\x00{target.url}".encode(), digest_size=8).digest()

    return sorted(targets, key=weight, reverse=True)


class RoutingTable:
    def __init__(self, targets: Iterable[Target], *, affinity_load_factor: float = 0.25) -> None:
        self.targets = list(targets)
        self._turns: dict[str, itertools.count[int]] = {}
        self.affinity_load_factor = affinity_load_factor

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

    def pick(
        self, model: str, exclude: Iterable[Target] = (), affinity: str | None = None
    ) -> Target | None:
        """The target for the next call of `model`, None when no serving target is left;
        with an affinity key, the key's own target while it is within its bounded load."""
        excluded = set(exclude)
        candidates = [t for t in self.serving(model) if t not in excluded]
        if not candidates:
            return None
        if affinity is not None and len(candidates) > 1:
            return self._pick_by_affinity(affinity, candidates)
        turn = next(self._turns.setdefault(model, itertools.count()))
        start = turn % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        # min keeps the first of equals: the rotation shares ties out in turn.
        return min(rotated, key=lambda t: t.in_flight)

    def _pick_by_affinity(self, key: str, candidates: list[Target]) -> Target:
        in_flight = sum(t.in_flight for t in candidates)
        share = (1 + self.affinity_load_factor) * (in_flight + 1) / len(candidates)
        bound = math.ceil(share) + AFFINITY_SLACK
        ranked = rendezvous_rank(key, candidates)
        # Some target is always under the bound (the bound is above the mean), so the
        # fallback is only for safety.
        return next((t for t in ranked if t.in_flight + 1 <= bound), ranked[0])

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
