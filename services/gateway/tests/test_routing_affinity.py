"""Conversation affinity in the routing table: rendezvous hashing with bounded loads
(routing.py). Pure bookkeeping, no I/O: the targets are plain Target records."""

from __future__ import annotations

from collections import Counter

from parlance.gateway.routing import RoutingTable, Target, conversation_key, rendezvous_rank
from parlance.generator.v1 import generator_pb2

MODEL = "chat"


def table(count: int, load_factor: float = 0.25) -> RoutingTable:
    info = generator_pb2.ModelInfo(id=MODEL, task=generator_pb2.MODEL_TASK_CHAT)
    targets = [
        Target(url=f"10.0.0.{i}:50051", client=None, serving=True, models={MODEL: info})
        for i in range(count)
    ]
    return RoutingTable(targets, affinity_load_factor=load_factor)


def test_one_key_always_goes_to_the_same_target() -> None:
    routes = table(3)
    first = routes.pick(MODEL, affinity="conversation-a")
    assert first is not None
    assert all(routes.pick(MODEL, affinity="conversation-a") is first for _ in range(20))


def test_keys_spread_over_every_target() -> None:
    routes = table(4)
    picks = Counter(routes.pick(MODEL, affinity=f"conversation-{i}").url for i in range(2000))
    assert len(picks) == 4
    # Each target's share is 500 on average; a fair hash keeps it within a few percent.
    assert all(400 < n < 600 for n in picks.values()), picks


def test_an_overloaded_target_spills_to_the_keys_next_choice() -> None:
    routes = table(3)
    ranked = rendezvous_rank("conversation-a", routes.targets)
    ranked[0].in_flight = 10
    # 10 in flight over 3 targets: the bound is ceil(1.25 * 11 / 3) + 4 = 9, so the preferred
    # target is over it and the key's second choice takes the call, not just any target.
    assert routes.pick(MODEL, affinity="conversation-a") is ranked[1]
    # At 7 in flight the bound is ceil(1.25 * 8 / 3) + 4 = 8, and 7 + 1 is within it.
    ranked[0].in_flight = 7
    assert routes.pick(MODEL, affinity="conversation-a") is ranked[0]
    # A light load never scatters a conversation: the slack covers it.
    ranked[0].in_flight = 3
    assert routes.pick(MODEL, affinity="conversation-a") is ranked[0]


def test_no_target_exceeds_the_bound_whatever_the_keys() -> None:
    routes = table(3, load_factor=0.25)
    # The worst case for plain hashing: every call carries the same key.
    for _ in range(60):
        target = routes.pick(MODEL, affinity="the same conversation")
        assert target is not None
        target.in_flight += 1
    loads = sorted(t.in_flight for t in routes.targets)
    # Never above the bound at the time of each pick: ceil(1.25 * 60 / 3) + 4 = 29 at most.
    assert loads[-1] <= 29 and loads[0] > 0, loads


def test_a_target_leaving_moves_only_its_own_keys() -> None:
    routes = table(4)
    keys = [f"conversation-{i}" for i in range(400)]
    before = {k: routes.pick(MODEL, affinity=k) for k in keys}
    gone = routes.targets[2]
    gone.serving = False
    after = {k: routes.pick(MODEL, affinity=k) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert moved and all(before[k] is gone for k in moved)


def test_without_a_key_the_least_loaded_target_is_picked() -> None:
    routes = table(2)
    routes.targets[0].in_flight = 3
    assert routes.pick(MODEL) is routes.targets[1]


def request(*messages: tuple[str, str], model: str = MODEL) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(
        model=model,
        chat=generator_pb2.ChatInput(
            messages=[generator_pb2.ChatMessage(role=r, content=c) for r, c in messages]
        ),
    )


def test_the_turns_of_a_conversation_share_its_key() -> None:
    opening = [("system", "Be brief."), ("user", "Plan a trip to Lisbon.")]
    turn_one = request(*opening)
    turn_three = request(
        *opening,
        ("assistant", "Day one: Alfama."),
        ("user", "And day two?"),
        ("assistant", "Belem."),
        ("user", "Day three?"),
    )
    assert conversation_key(turn_one) == conversation_key(turn_three)
    assert conversation_key(turn_one) != conversation_key(request(("user", "Plan a trip.")))
    assert conversation_key(turn_one) != conversation_key(request(*opening, model="other"))
    assert conversation_key(turn_one) != conversation_key(
        request(("system", "Be thorough."), ("user", "Plan a trip to Lisbon."))
    )
