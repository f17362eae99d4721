"""Traffic splits (splits.py): one user always gets one model; users spread by the weights."""

from __future__ import annotations

import pytest

from parlance.gateway.splits import SplitError, choose, parse_alias, parse_aliases


def test_the_split_follows_the_weights_and_each_user_stays() -> None:
    weights = parse_alias("default", {"base": 90, "tuned": 10})
    users = [f"user-{i}" for i in range(20_000)]
    chosen = {u: choose("default", weights, u) for u in users}
    share = sum(1 for m in chosen.values() if m == "tuned") / len(users)
    # Binomial standard deviation at n=20,000, p=0.1 is 0.0021: ±0.01 is almost 5 of them.
    assert share == pytest.approx(0.10, abs=0.01)
    assert all(choose("default", weights, u) == chosen[u] for u in users[:500])


def test_moving_weights_moves_only_the_users_between() -> None:
    before = parse_alias("default", {"base": 90, "tuned": 10})
    after = parse_alias("default", {"base": 80, "tuned": 20})
    users = [f"u{i}" for i in range(5_000)]
    for user in users:
        if choose("default", before, user) == "tuned":
            assert choose("default", after, user) == "tuned"


def test_another_alias_is_another_cohort() -> None:
    weights = parse_alias("a", {"x": 50, "y": 50})
    users = [f"u{i}" for i in range(2_000)]
    same = sum(choose("a", weights, u) == choose("b", weights, u) for u in users)
    assert 0.4 < same / len(users) < 0.6


def test_no_user_gets_the_heaviest_and_zero_weight_gets_nobody() -> None:
    assert choose("d", parse_alias("d", {"a": 1, "b": 3}), None) == "b"
    weights = parse_alias("d", {"a": 0, "b": 1})
    assert {choose("d", weights, f"u{i}") for i in range(200)} == {"b"}


@pytest.mark.parametrize(
    "value",
    [{}, {"a": -1}, {"a": 0}, {"a": True}, {"a": float("inf")}, {"": 1}, "", 3, ["a"]],
)
def test_bad_splits_are_refused(value: object) -> None:
    with pytest.raises(SplitError):
        parse_alias("default", value)


def test_configured_aliases_keep_the_old_syntax() -> None:
    assert parse_aliases({"default": "m", "ab": {"m": 1, "n": 1}}) == {
        "default": (("m", 1.0),),
        "ab": (("m", 1.0), ("n", 1.0)),
    }


def test_a_bad_configured_split_stops_the_settings() -> None:
    from pydantic import ValidationError

    from parlance.gateway.config import GatewaySettings

    with pytest.raises(ValidationError, match="the weight of 'a' must be 0 or more"):
        GatewaySettings(model_aliases={"default": {"a": -1.0}})
