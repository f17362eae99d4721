"""The profanity backend scores through CalibratedLinearScorer on TfidfRows' features, and
exactly as the library."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from parlance.safety.categories import HARASSMENT
from parlance.safety.classifier.profanity import (
    CalibratedLinearScorer,
    ProfanityClassifier,
    TfidfRows,
    exportable_model,
    fast_predict_prob,
)

WORDS = (
    "you are an idiot stupid moron loser the printer jammed again recipe pancakes flour "
    "history bastard hate mondays damn close shut door please kill family hello thanks "
    "weather python code function error crap hell clown fool great lovely"
).split()


def sentences(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(0, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def library():  # type: ignore[no-untyped-def]
    from profanity_check import profanity_check

    return profanity_check


def test_direct_scores_equal_the_librarys(library) -> None:  # type: ignore[no-untyped-def]
    fast = fast_predict_prob(library)
    assert fast is not None, "the shipped model should take the direct path"
    texts = sentences(500)
    assert np.max(np.abs(fast(texts) - library.predict_prob(texts))) < 1e-12
    # Batches and single texts agree (the gateway sends both).
    assert fast(texts[:1])[0] == pytest.approx(fast(texts)[0], abs=1e-15)


def test_tfidf_rows_equal_the_vectorizers_transform(library) -> None:  # type: ignore[no-untyped-def]
    rows = TfidfRows(library.vectorizer)
    texts = [*sentences(200, seed=11), "", "THE the The!", "naïve café — 123 ab"]
    dense = library.vectorizer.transform(texts).toarray()
    for text, expected in zip(texts, dense, strict=True):
        indices, values = rows(text)
        mine = np.zeros_like(expected)
        mine[indices] = values
        assert np.max(np.abs(mine - expected)) < 1e-12, text


def test_a_vectorizer_of_other_settings_is_not_taken_but_still_scored(library) -> None:  # type: ignore[no-untyped-def]
    other = copy.copy(library.vectorizer)
    other.sublinear_tf = True
    with pytest.raises(ValueError, match="other settings"):
        TfidfRows(other)

    class Sublinear:
        model = library.model
        vectorizer = other

        @staticmethod
        def predict_prob(texts):  # type: ignore[no-untyped-def]
            return library.model.predict_proba(other.transform(texts))[:, 1]

    fast = fast_predict_prob(Sublinear)
    assert fast is not None, "the sparse direct path should still be taken"
    texts = sentences(50, seed=3)
    assert np.max(np.abs(fast(texts) - Sublinear.predict_prob(texts))) < 1e-12


def test_a_model_of_another_shape_falls_back_to_the_library(library) -> None:  # type: ignore[no-untyped-def]
    class Other:
        model = object()
        vectorizer = library.vectorizer
        predict_prob = library.predict_prob

    assert fast_predict_prob(Other) is None
    with pytest.raises(ValueError):
        CalibratedLinearScorer(library.model.calibrated_classifiers_[0].estimator)


async def test_classifier_uses_it_and_keeps_its_measured_scores() -> None:
    classifier = ProfanityClassifier()
    await classifier.load()
    scores = classifier.score(["You are an idiot.", "Here is a recipe for pancakes."])
    assert scores[0][HARASSMENT] > 0.99
    assert scores[1][HARASSMENT] < 0.2


def test_the_exported_model_scores_as_the_library_without_sklearn(library) -> None:  # type: ignore[no-untyped-def]
    """What ExportClassifier sends: its own analyzer (a regular expression, lower case, stop
    words), not sklearn's, and still the library's scores."""
    model = exportable_model(library)
    assert model is not None
    texts = [*sentences(500, seed=5), "", "THE the The!", "naïve café — 123 ab", "kill -9 1234"]
    assert np.max(np.abs(model.scores(texts) - library.predict_prob(texts))) < 1e-12


def test_a_vectorizer_with_an_analyzer_of_its_own_is_not_exported(library, caplog) -> None:  # type: ignore[no-untyped-def]
    other = copy.copy(library.vectorizer)
    other.strip_accents = "unicode"

    class Accents:
        model = library.model
        vectorizer = other
        predict_prob = library.predict_prob

    assert exportable_model(Accents) is None
    assert "an analyzer of its own: {'strip_accents': 'unicode'}" in caplog.text
