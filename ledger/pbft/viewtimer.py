"""The view-change timer: when a backup gives up on its primary. Sans-IO, time injected.

A request waiting arms it (``arm``); executing requests stops it and takes the wait as a sample
(``progress``); a view change doubles the timeout up to ``max_view_change_timeout_ms``
(``back_off``). With ``min_view_change_timeout_ms`` set, the timeout after progress adapts to
how long requests wait before progress (``base_timeout``). ``ViewChanges`` fires the view
change when ``deadline`` passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica

# The adaptive timeout: ADAPT_FACTOR times (smoothed wait + 4 x its mean deviation), the waits
# being how long requests were pending before each progress (Jacobson's estimator, as TCP's RTO).
ADAPT_FACTOR = 2


class ViewTimer:
    def __init__(self, core: Replica) -> None:
        self.core = core  # its ``cfg`` is the epoch's: read at each use
        self.timeout = core.cfg.view_change_timeout_ms
        self.deadline: int | None = None
        self.armed_at: int | None = None  # when the running timer was armed
        self.srtt: int | None = None  # smoothed wait before progress (ms), None: no sample yet
        self.rttvar = 0

    def back_off(self, now_ms: int) -> None:
        # The adaptive timeout detects a dead primary; a view change itself is given at least
        # the configured timeout: its messages (2f+1 VIEW-CHANGEs in a NEW-VIEW, each with
        # prepared proofs) are far larger than a block's votes, and on a thin link take
        # seconds where the normal case took a fraction of one.
        self.deadline = now_ms + max(self.timeout, self.core.cfg.view_change_timeout_ms)
        self.armed_at = None  # a wait for a view change is not a sample of the normal case
        self.timeout = min(2 * self.timeout, self.core.cfg.max_view_change_timeout_ms)

    def arm(self, now_ms: int) -> None:
        """A request waits and no timer runs: it runs from now."""
        self.deadline = now_ms + self.timeout
        self.armed_at = now_ms

    def base_timeout(self) -> int:
        """The timeout after progress: the configured one, or (adaptive) ADAPT_FACTOR times
        the estimate of how long requests wait before progress, within
        [min_view_change_timeout_ms, view_change_timeout_ms]. The upper bound is today's fixed
        timeout, so a slow primary that keeps making just enough progress cannot stretch it."""
        cfg = self.core.cfg
        if not cfg.min_view_change_timeout_ms or self.srtt is None:
            return cfg.view_change_timeout_ms
        estimate = ADAPT_FACTOR * (self.srtt + 4 * self.rttvar)
        return max(cfg.min_view_change_timeout_ms, min(cfg.view_change_timeout_ms, estimate))

    def progress(self, now_ms: int) -> None:
        """Requests were executed in this view: the wait since the timer was armed is a
        sample of the estimate, and the backoff is reset."""
        if self.armed_at is not None and self.deadline is not None:
            sample = max(0, now_ms - self.armed_at)
            if self.srtt is None:
                self.srtt, self.rttvar = sample, sample // 2
            else:
                self.rttvar = (3 * self.rttvar + abs(sample - self.srtt)) // 4
                self.srtt = (7 * self.srtt + sample) // 8
        self.timeout = self.base_timeout()
        self.deadline = None
        self.armed_at = None
