"""The route file's example vectors, indexed for classification: each intent's examples and
centroid, optionally centred on the mean example vector, and the default route's out-of-scope
examples; for the file's `logistic` method, a softmax regression trained on them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from parlance.gateway.intents.names import anchor
from parlance.gateway.intents.routes import LoadedRoutes, RouteFile

__all__ = ["ExampleIndex", "anchor", "example_texts", "softmax_regression"]


def example_texts(spec: RouteFile) -> list[list[str]]:
    """Each route's example texts (its name first, with name_anchors), then the default
    route's examples."""
    groups = [[anchor(r.name)] * spec.name_anchors + r.examples for r in spec.routes]
    return [*[list(dict.fromkeys(g)) for g in groups], spec.default.examples]


class ExampleIndex:
    """The examples' vectors and each intent's centroid, for one loaded route file (centred
    on the mean example vector when the file says `center`), and the default route's
    out-of-scope examples."""

    def __init__(self, routes: LoadedRoutes, vectors: Mapping[str, np.ndarray]) -> None:
        spec = routes.spec
        self.names = [r.name for r in spec.routes]
        rows, owners = [], []
        # The default route's examples are one more group, after the intents.
        for index, texts in enumerate(example_texts(spec)):
            for text in texts:
                rows.append(vectors[text])
                owners.append(index)
        examples = np.vstack(rows).astype(np.float32)
        self.center = examples.mean(axis=0) if spec.center else None
        self.examples = self._centred(examples)
        self.owners = np.array(owners)
        self.has_default = bool(spec.default.examples)
        groups = len(self.names) + int(self.has_default)
        self.groups = [np.flatnonzero(self.owners == i) for i in range(groups)]
        centroids = np.vstack([self.examples[g].mean(axis=0) for g in self.groups])
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        self.weights: tuple[np.ndarray, np.ndarray] | None = None
        if spec.method == "logistic":
            self.weights = softmax_regression(self.examples, self.owners, groups)

    def _centred(self, rows: np.ndarray) -> np.ndarray:
        if self.center is None:
            return rows
        rows = rows - self.center
        return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)

    def scores(self, vector: np.ndarray, method: str, k: int) -> tuple[np.ndarray, float | None]:
        """One score per intent, in the file's order, and the default examples' score (None
        without them)."""
        vector = self._centred(vector)
        if self.weights is not None:
            logits = vector @ self.weights[0] + self.weights[1]
            values = np.exp(logits - logits.max())
            values = (values / values.sum()).astype(np.float32)
        elif method == "centroid":
            values = self.centroids @ vector
        else:
            similarities = self.examples @ vector
            values = np.empty(len(self.groups), dtype=np.float32)
            for group, columns in enumerate(self.groups):
                group_values = similarities[columns]
                top = min(k, len(group_values))
                cut = len(group_values) - top
                values[group] = np.partition(group_values, cut)[cut:].mean()
        if self.has_default:
            return values[:-1], float(values[-1])
        return values, None


# Inverse L2 strength of the softmax regression (scikit-learn's C): 1, 10 and 100 were within
# 0.003 of each other on the route file's own held-out examples (bench/intent_eval.py).
REGULARISATION_C = 10.0


def softmax_regression(
    rows: np.ndarray, owners: np.ndarray, groups: int, iterations: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """(weights, biases) of a multinomial logistic regression of each row's group: mean cross
    entropy + ||W||^2 / (2 C n), the biases free (as scikit-learn's LogisticRegression, whose
    predictions it matched on the intent set). With far fewer examples than dimensions, W is
    kept as rows.T @ A and Nesterov's accelerated gradient runs on A (n x groups): a few ms."""
    n = len(rows)
    gram = rows @ rows.T
    targets = np.eye(groups)[owners]
    lam = 1.0 / (REGULARISATION_C * n)
    # Lipschitz bound of the gradient: the softmax's curvature is at most 1/2.
    step = 1.0 / (0.5 * float(np.linalg.eigvalsh(gram)[-1]) / n + lam + 0.5)
    coef, bias = np.zeros((n, groups)), np.zeros(groups)
    last_coef, last_bias = coef, bias
    for t in range(1, iterations + 1):
        momentum = (t - 1) / (t + 2)
        ahead = coef + momentum * (coef - last_coef)
        ahead_bias = bias + momentum * (bias - last_bias)
        logits = gram @ ahead + ahead_bias
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        residual = (probabilities - targets) / n
        last_coef, last_bias = coef, bias
        coef = ahead - step * (residual + lam * ahead)
        bias = ahead_bias - step * residual.sum(axis=0)
    return (rows.T @ coef).astype(np.float32), bias.astype(np.float32)
