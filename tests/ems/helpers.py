"""Small plan inputs for tests: every slot its own price group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.ems.problem import Job, PlanInput


def tiny(
    jobs: Sequence[Job],
    retail: Sequence[int],
    *,
    pv_wh: Sequence[int] | None = None,
    base_wh: Sequence[int] | None = None,
    limit_wh: int | Sequence[int] = 10_000,
    feed_in: int = 10_000,
    peak_weight: float = 0.0,
) -> PlanInput:
    n = len(retail)
    limit = (np.full(n, limit_wh) if isinstance(limit_wh, int) else np.asarray(limit_wh))
    zeros = np.zeros(n, dtype=np.int64)
    return PlanInput(
        jobs=tuple(jobs),
        base_mwh=np.asarray(base_wh if base_wh is not None else zeros, dtype=np.int64) * 1000,
        pv_mwh=np.asarray(pv_wh if pv_wh is not None else zeros, dtype=np.int64) * 1000,
        limit_mwh=limit.astype(np.int64) * 1000,
        group=np.arange(n, dtype=np.int64),
        retail=np.asarray(retail, dtype=np.int64),
        feed_in=np.full(n, feed_in, dtype=np.int64),
        community_price=np.full(n, feed_in, dtype=np.int64),
        community_buy_mwh=zeros.copy(),
        community_sell_mwh=zeros.copy(),
        bought_mwh=zeros.copy(),
        sold_mwh=zeros.copy(),
        peak_weight=peak_weight,
    )


def on_slots(schedule_row: np.ndarray) -> list[int]:
    return [int(t) for t in np.nonzero(schedule_row)[0]]
