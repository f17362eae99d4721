"""The statistics of the model report (GET /v1/admin/models/report), pure functions.

- Thumbs-up rate: the Wilson score interval (95%), which stays inside [0, 1] and is honest for
  small counts and rates near 0 or 1, where the normal approximation is not.
- Side-by-side comparisons: Bradley-Terry strengths fitted by Hunter's MM algorithm (2004),
  reported as log-strengths centred on 0 (a difference of d means the first model is preferred
  with probability 1 / (1 + e^-d)), with a percentile bootstrap interval: the comparisons are
  resampled (multinomially, by count) with a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# The 0.975 quantile of the standard normal distribution (two-sided 95%).
Z95 = 1.959963984540054
# Pseudo-comparisons added per direction to every pair of models that met: an undefeated
# model would otherwise have an infinite strength (the MLE does not exist).
BT_PRIOR = 0.5
BT_MAX_ITERATIONS = 1000
BT_TOLERANCE = 1e-9


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None without trials."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes ({successes}) must be within 0..trials ({trials})")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Comparison:
    """`count` side-by-side comparisons in which `winner`'s answer was chosen over `loser`'s."""

    winner: str
    loser: str
    count: int


def _win_matrix(comparisons: Iterable[Comparison], ids: Sequence[str]) -> np.ndarray:
    index = {model: i for i, model in enumerate(ids)}
    wins = np.zeros((len(ids), len(ids)))
    for c in comparisons:
        if c.winner != c.loser and c.count > 0:
            wins[index[c.winner], index[c.loser]] += c.count
    return wins


def _fit(wins: np.ndarray, prior: float) -> np.ndarray:
    """Log-strengths (mean 0) maximizing the Bradley-Terry likelihood of the win matrix
    (wins[i, j]: times i beat j), each met pair padded with `prior` wins either way."""
    met = (wins + wins.T) > 0
    padded = wins + prior * met
    games = padded + padded.T
    won = padded.sum(axis=1)
    strength = np.ones(len(wins))
    for _ in range(BT_MAX_ITERATIONS):
        pair_sum = strength[:, None] + strength[None, :]
        denominator = (games / pair_sum).sum(axis=1)
        updated = np.where(denominator > 0, won / np.where(denominator > 0, denominator, 1), 1.0)
        # A model that never won (with no prior) tends to strength 0: keep it finite.
        updated = np.maximum(updated, 1e-12)
        updated /= math.exp(np.log(updated).mean())
        if np.max(np.abs(updated - strength)) < BT_TOLERANCE:
            strength = updated
            break
        strength = updated
    logs: np.ndarray = np.log(strength)
    return logs - logs.mean()


def bradley_terry(comparisons: Sequence[Comparison], prior: float = BT_PRIOR) -> dict[str, float]:
    """Log-strength per model that took part in a comparison (mean 0)."""
    ids = sorted({c.winner for c in comparisons} | {c.loser for c in comparisons})
    if not ids:
        return {}
    logs = _fit(_win_matrix(comparisons, ids), prior)
    return {model: float(value) for model, value in zip(ids, logs, strict=True)}


@dataclass(frozen=True)
class Strength:
    strength: float
    # The 2.5th and 97.5th percentiles over the bootstrap replicates.
    low: float
    high: float


def bradley_terry_bootstrap(
    comparisons: Sequence[Comparison],
    replicates: int = 200,
    seed: int = 0,
    prior: float = BT_PRIOR,
) -> dict[str, Strength]:
    """Bradley-Terry log-strengths with a 95% percentile bootstrap interval each: the total
    number of comparisons is redrawn multinomially over the (winner, loser) rows."""
    rows = [c for c in comparisons if c.count > 0 and c.winner != c.loser]
    ids = sorted({c.winner for c in rows} | {c.loser for c in rows})
    if not ids:
        return {}
    point = _fit(_win_matrix(rows, ids), prior)
    counts = np.array([c.count for c in rows], dtype=float)
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    samples = np.empty((replicates, len(ids)))
    for r in range(replicates):
        drawn = rng.multinomial(total, counts / total)
        resampled = [
            Comparison(c.winner, c.loser, int(n)) for c, n in zip(rows, drawn, strict=True)
        ]
        samples[r] = _fit(_win_matrix(resampled, ids), prior)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    return {
        model: Strength(float(point[i]), float(low[i]), float(high[i]))
        for i, model in enumerate(ids)
    }


def win_loss(comparisons: Iterable[Comparison]) -> dict[str, tuple[int, int]]:
    """Per model: (comparisons won, comparisons lost)."""
    result: dict[str, list[int]] = {}
    for c in comparisons:
        if c.winner == c.loser or c.count <= 0:
            continue
        result.setdefault(c.winner, [0, 0])[0] += c.count
        result.setdefault(c.loser, [0, 0])[1] += c.count
    return {model: (won, lost) for model, (won, lost) in result.items()}
