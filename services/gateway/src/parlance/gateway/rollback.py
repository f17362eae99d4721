"""The rollback rule of traffic splits (GATEWAY_ROLLBACK_CHECK_S > 0).

A split alias that sends traffic to a registered adapter and to its parent is checked every
`check_s` against the last `window_days` of feedback: when both have at least `min_rated`
rated answers and the adapter's thumbs-up rate is worse beyond doubt, meaning the upper end
of its 95% Wilson interval lies below the lower end of the parent's by more than `margin`,
the adapter's weight goes to its parent (persisted like any run-time alias), with a warning
in the log and parlance_gateway_split_rollbacks_total. Every gateway replica may check;
the decision is the same on the same data, so a second one finds nothing left to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from parlance.gateway import errors, model_stats
from parlance.gateway.clients import HistoryClient
from parlance.gateway.metrics import SPLIT_ROLLBACKS
from parlance.gateway.model_registry import RuntimeModels
from parlance.gateway.splits import Weights
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)


def worse_beyond_doubt(
    adapter: tuple[int, int], parent: tuple[int, int], min_rated: int, margin: float
) -> bool:
    """(thumbs up, rated) of each: the rule above."""
    if adapter[1] < min_rated or parent[1] < min_rated:
        return False
    adapter_ci = model_stats.wilson_interval(*adapter)
    parent_ci = model_stats.wilson_interval(*parent)
    assert adapter_ci is not None and parent_ci is not None
    return adapter_ci[1] < parent_ci[0] - margin


def rolled_back(weights: Weights, adapter: str, parent: str) -> Weights:
    """The split with the adapter's weight moved to its parent (the adapter stays listed at
    0, so the alias still shows what was tried)."""
    moved = dict(weights)[adapter]
    return tuple((m, 0.0 if m == adapter else w + moved if m == parent else w) for m, w in weights)


class SplitRollback:
    def __init__(
        self,
        runtime: RuntimeModels,
        history: HistoryClient,
        check_s: float,
        window_days: float,
        min_rated: int,
        margin: float,
    ) -> None:
        self.runtime = runtime
        self.history = history
        self.check_s = check_s
        self.window_s = window_days * 86400
        self.min_rated = min_rated
        self.margin = margin
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.check_s > 0:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check()
            except errors.APIError as exc:
                log.warning("split rollback check skipped: %s", exc.message)
            except Exception:  # the loop must outlive any surprise
                log.exception("split rollback check failed")

    def _candidates(self) -> list[tuple[str, Weights, str, str]]:
        """(alias, weights, adapter, parent) of each split sending traffic to both."""
        found = []
        for alias, weights in self.runtime.models.aliases.items():
            live = {m for m, w in weights if w > 0}
            for model in live:
                registration = self.runtime.registrations.get(model)
                if registration and registration.parent in live:
                    found.append((alias, weights, model, registration.parent))
        return found

    async def check(self) -> list[str]:
        """Runs the rule once; the aliases it rolled back."""
        candidates = self._candidates()
        if not candidates:
            return []
        since = Timestamp()
        since.FromSeconds(int(time.time() - self.window_s))
        reply = await self.history.get_model_report(history_pb2.GetModelReportRequest(since=since))
        rows: dict[str, Any] = {row.model: row for row in reply.models}
        changed = []
        for alias, weights, adapter, parent in candidates:
            a, p = rows.get(adapter), rows.get(parent)
            if a is None or p is None or alias in changed:
                continue
            if not worse_beyond_doubt(
                (int(a.thumbs_up), int(a.rated_answers)),
                (int(p.thumbs_up), int(p.rated_answers)),
                self.min_rated,
                self.margin,
            ):
                continue
            await self.runtime.set_alias(alias, rolled_back(weights, adapter, parent))
            SPLIT_ROLLBACKS.labels(alias, adapter).inc()
            log.warning(
                "split rolled back: the adapter's thumbs-up rate is below its parent's",
                extra={
                    "alias": alias,
                    "model": adapter,
                    "parent": parent,
                    "adapter_up_rated": [int(a.thumbs_up), int(a.rated_answers)],
                    "parent_up_rated": [int(p.thumbs_up), int(p.rated_answers)],
                },
            )
            changed.append(alias)
        return changed
