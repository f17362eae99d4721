"""The model report's statistics (model_stats.py) against known values."""

from __future__ import annotations

import math

import pytest

from parlance.gateway.model_stats import (
    Comparison,
    bradley_terry,
    bradley_terry_bootstrap,
    wilson_interval,
    win_loss,
)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion",
        # Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe(successes: int, trials: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, trials)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-5)
    assert interval[1] == pytest.approx(high, abs=5e-5)


def test_wilson_closed_forms_and_edges() -> None:
    z2 = 1.959963984540054**2
    # All failures: [0, z²/(n+z²)]; all successes: [n/(n+z²), 1].
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bradley_terry_two_models_is_the_odds() -> None:
    # Without a prior the MLE of two models is closed-form: p_a/p_b = wins_a/wins_b.
    strengths = bradley_terry([Comparison("a", "b", 3), Comparison("b", "a", 1)], prior=0)
    assert strengths["a"] - strengths["b"] == pytest.approx(math.log(3), abs=1e-6)
    assert strengths["a"] + strengths["b"] == pytest.approx(0.0, abs=1e-9)
    # The prior pads each met pair by 0.5 each way: (3.5 / 1.5).
    padded = bradley_terry([Comparison("a", "b", 3), Comparison("b", "a", 1)])
    assert padded["a"] - padded["b"] == pytest.approx(math.log(3.5 / 1.5), abs=1e-6)


def test_bradley_terry_three_models_satisfies_the_likelihood_equations() -> None:
    rows = [
        Comparison("a", "b", 6),
        Comparison("b", "a", 2),
        Comparison("b", "c", 5),
        Comparison("c", "b", 3),
        Comparison("a", "c", 4),
        Comparison("c", "a", 1),
    ]
    theta = bradley_terry(rows, prior=0)
    p = {m: math.exp(t) for m, t in theta.items()}
    # At the MLE every model's wins equal its expected wins: W_i = sum_j n_ij p_i/(p_i+p_j).
    games: dict[tuple[str, str], int] = {}
    for c in rows:
        key = (min(c.winner, c.loser), max(c.winner, c.loser))
        games[key] = games.get(key, 0) + c.count
    for model in p:
        won = sum(c.count for c in rows if c.winner == model)
        expected = sum(
            n * p[model] / (p[model] + p[other])
            for (x, y), n in games.items()
            if model in (x, y)
            for other in [y if x == model else x]
        )
        assert expected == pytest.approx(won, abs=1e-6)
    assert theta["a"] > theta["b"] > theta["c"]


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rows = [Comparison("base", "tuned", 40), Comparison("tuned", "base", 60)]
    first = bradley_terry_bootstrap(rows, replicates=100, seed=7)
    assert first == bradley_terry_bootstrap(rows, replicates=100, seed=7)
    tuned = first["tuned"]
    assert tuned.low < tuned.strength < tuned.high
    # 60 of 100 is not far from even: the interval of the difference (twice the strength,
    # two models centred on 0) holds log(60/40) ± about 0.4.
    assert 0 < tuned.high and tuned.low < 0.2
    assert bradley_terry_bootstrap([]) == {}


def test_win_loss_leaves_self_comparisons_out() -> None:
    rows = [Comparison("a", "b", 2), Comparison("b", "a", 1), Comparison("a", "a", 5)]
    assert win_loss(rows) == {"a": (2, 1), "b": (1, 2)}
