"""parlance.common.linear_text: the arithmetic by hand on a two-term model, and the shapes
from_arrays refuses (a damaged or mismatched export must not become a copy)."""

from __future__ import annotations

import math

import pytest

from parlance.common.linear_text import LinearTextModel, WordAnalyzer

TWO_TERMS = {
    "token_pattern": r"(?u)\b\w\w+\b",
    "lowercase": True,
    "stop_words": ["the"],
    "terms": ["idiot", "printer"],
    "idf": [2.0, 1.0],
    # terms x folds: two folds
    "weights": [3.0, 1.0, -1.0, 0.0],
    "intercepts": [0.5, -0.5],
    "a": [-1.0, -2.0],
    "b": [0.0, 0.1],
}


def test_the_score_is_the_mean_of_the_folds_sigmoids_on_tfidf_features() -> None:
    model = LinearTextModel.from_arrays(**TWO_TERMS)
    # "the" is a stop word, "a" too short for the pattern; idiot x2 (idf 2), printer x1 (idf 1).
    x = [2 * 2.0, 1 * 1.0]
    norm = math.hypot(*x)
    x = [v / norm for v in x]
    decisions = [x[0] * 3.0 + x[1] * -1.0 + 0.5, x[0] * 1.0 + x[1] * 0.0 - 0.5]
    expected = (
        sum(
            1 / (1 + math.exp(a * d + b))
            for d, a, b in zip(decisions, TWO_TERMS["a"], TWO_TERMS["b"], strict=True)
        )
        / 2
    )
    (score,) = model.scores(["The IDIOT, a printer, the idiot!"])
    assert score == pytest.approx(expected, abs=1e-12)
    # No known term: the intercepts alone.
    (empty,) = model.scores(["nothing known here"])
    assert empty == pytest.approx(
        (1 / (1 + math.exp(-1.0 * 0.5)) + 1 / (1 + math.exp(-2.0 * -0.5 + 0.1))) / 2
    )
    assert model.terms() == ["idiot", "printer"]


def test_a_pattern_group_gives_the_groups_text() -> None:
    analyzer = WordAnalyzer(r"#(\w+)", lowercase=False, stop_words=frozenset({"skip"}))
    assert analyzer("#One two #skip #Three") == ["One", "Three"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": [3.0, 1.0, -1.0]}, "3 weights for 2 terms x 2 folds"),
        ({"terms": ["idiot", "idiot"]}, "repeats a term"),
        ({"idf": [2.0]}, "must agree"),
        ({"a": [-1.0]}, "calibrations"),
        ({"intercepts": []}, "0 folds"),
    ],
)
def test_sizes_that_do_not_fit_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinearTextModel.from_arrays(**(TWO_TERMS | change))
