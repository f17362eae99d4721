"""A sigmoid-calibrated linear text classifier over an L2-normalised TF-IDF bag of words, scored
with numpy alone: the shape of profanity-check's model (scikit-learn's CalibratedClassifierCV
over a LinearSVC, on a TfidfVectorizer's word unigrams).

Two services score it: the safety service (classifier/profanity.py, which builds it from
scikit-learn's fitted objects and checks it against the library's own predict_prob), and the
gateway, which receives the same numbers through safety's ExportClassifier and scores a chat's
input in its own process before the service's verdict arrives (gateway input_precheck.py).
One implementation of the arithmetic serves both, so the two cannot drift apart.

The arithmetic is scikit-learn's: the analyzer (lower case, the token pattern's matches, stop
words dropped), term counts through the vocabulary times idf, L2-normalised; then per
calibration fold k, p_k = 1 / (1 + exp(a_k * (x . w_k + c_k) + b_k)), and p = mean_k p_k.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WordAnalyzer:
    """scikit-learn's word analyzer for the settings it is built from (no accent stripping, no
    custom preprocessor or tokenizer, unigrams): what callers must check before they use it."""

    token_pattern: str
    lowercase: bool
    stop_words: frozenset[str]

    def __post_init__(self) -> None:
        # re.findall returns a group's text when the pattern has one, as scikit-learn does.
        object.__setattr__(self, "_findall", re.compile(self.token_pattern).findall)

    def __call__(self, text: str) -> list[str]:
        tokens: list[str] = self._findall(text.lower() if self.lowercase else text)  # type: ignore[attr-defined]
        if self.stop_words:
            return [token for token in tokens if token not in self.stop_words]
        return tokens


def tfidf_row(
    tokens: Sequence[str], vocabulary: Mapping[str, int], idf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One text's TF-IDF features as (term indices, weights): raw counts of the known terms,
    times idf, L2-normalised (a text with no known term has none)."""
    counts: dict[int, int] = {}
    for token in tokens:
        index = vocabulary.get(token)
        if index is not None:
            counts[index] = counts.get(index, 0) + 1
    indices = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
    values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    values *= idf[indices]
    norm = float(np.sqrt(values @ values))
    if norm > 0.0:
        values /= norm
    return indices, values


@dataclass(frozen=True)
class CalibratedLinear:
    """The calibrated folds: weights (terms x folds), one intercept and one sigmoid (a, b) per
    fold."""

    weights: np.ndarray
    intercepts: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        folds = self.weights.shape[1] if self.weights.ndim == 2 else -1
        if folds < 1 or not (len(self.intercepts) == len(self.a) == len(self.b) == folds):
            raise ValueError(
                f"weights {self.weights.shape} do not match {len(self.intercepts)} intercepts "
                f"and {len(self.a)}/{len(self.b)} calibrations"
            )

    def calibrated(self, decision: np.ndarray) -> np.ndarray:
        """The mean over folds of each fold's sigmoid of its decision values (texts x folds)."""
        return np.asarray((1.0 / (1.0 + np.exp(self.a * decision + self.b))).mean(axis=1))

    def rows(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The probability of each text given as (term indices, weights)."""
        decision = np.empty((len(rows), self.weights.shape[1]))
        for i, (indices, values) in enumerate(rows):
            decision[i] = values @ self.weights[indices]
        return self.calibrated(decision + self.intercepts)


@dataclass(frozen=True)
class LinearTextModel:
    """The whole classifier: analyzer, vocabulary and idf, calibrated folds."""

    analyzer: WordAnalyzer
    vocabulary: Mapping[str, int]
    idf: np.ndarray
    linear: CalibratedLinear

    def __post_init__(self) -> None:
        terms = len(self.idf)
        if len(self.vocabulary) != terms or self.linear.weights.shape[0] != terms:
            raise ValueError(
                f"{len(self.vocabulary)} terms, {terms} idf values and "
                f"{self.linear.weights.shape[0]} weight rows must agree"
            )

    @classmethod
    def from_arrays(
        cls,
        *,
        token_pattern: str,
        lowercase: bool,
        stop_words: Collection[str],
        terms: Sequence[str],
        idf: Sequence[float],
        weights: Sequence[float],
        intercepts: Sequence[float],
        a: Sequence[float],
        b: Sequence[float],
    ) -> LinearTextModel:
        """From flat lists (ExportClassifier's message): term i is column i, `weights` row-major
        (terms x folds). ValueError when the sizes do not fit together."""
        folds = len(intercepts)
        if folds < 1 or len(weights) != len(terms) * folds:
            raise ValueError(f"{len(weights)} weights for {len(terms)} terms x {folds} folds")
        if len(set(terms)) != len(terms):
            raise ValueError("the vocabulary repeats a term")
        return cls(
            analyzer=WordAnalyzer(token_pattern, lowercase, frozenset(stop_words)),
            vocabulary={term: index for index, term in enumerate(terms)},
            idf=np.asarray(idf, dtype=np.float64),
            linear=CalibratedLinear(
                weights=np.asarray(weights, dtype=np.float64).reshape(len(terms), folds),
                intercepts=np.asarray(intercepts, dtype=np.float64),
                a=np.asarray(a, dtype=np.float64),
                b=np.asarray(b, dtype=np.float64),
            ),
        )

    def terms(self) -> list[str]:
        """The vocabulary in column order."""
        ordered = [""] * len(self.vocabulary)
        for term, index in self.vocabulary.items():
            ordered[index] = term
        return ordered

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """The positive class's probability of each text."""
        return self.linear.rows(
            [tfidf_row(self.analyzer(text), self.vocabulary, self.idf) for text in texts]
        )
