"""The route file's example vectors, indexed for classification: each intent's examples and
centroid, optionally centred on the mean example vector, and the default route's out-of-scope
examples."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from parlance.gateway.intents.routes import LoadedRoutes


class ExampleIndex:
    """The examples' vectors and each intent's centroid, for one loaded route file (centred
    on the mean example vector when the file says `center`), and the default route's
    out-of-scope examples."""

    def __init__(self, routes: LoadedRoutes, vectors: Mapping[str, np.ndarray]) -> None:
        spec = routes.spec
        self.names = [r.name for r in spec.routes]
        rows, owners = [], []
        for index, route in enumerate(spec.routes):
            for example in route.examples:
                rows.append(vectors[example])
                owners.append(index)
        # The default route's examples are one more group, after the intents.
        for example in spec.default.examples:
            rows.append(vectors[example])
            owners.append(len(self.names))
        examples = np.vstack(rows).astype(np.float32)
        self.center = examples.mean(axis=0) if spec.center else None
        self.examples = self._centred(examples)
        self.owners = np.array(owners)
        self.has_default = bool(spec.default.examples)
        groups = len(self.names) + int(self.has_default)
        self.groups = [np.flatnonzero(self.owners == i) for i in range(groups)]
        centroids = np.vstack([self.examples[g].mean(axis=0) for g in self.groups])
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    def _centred(self, rows: np.ndarray) -> np.ndarray:
        if self.center is None:
            return rows
        rows = rows - self.center
        return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)

    def scores(self, vector: np.ndarray, method: str, k: int) -> tuple[np.ndarray, float | None]:
        """One score per intent, in the file's order, and the default examples' score (None
        without them)."""
        vector = self._centred(vector)
        if method == "centroid":
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
