"""Stopping an asyncio task: cancelled, then waited for, so that it has ended when ``close``
returns (the replica's listener and peer links, the ledger client's connections)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended, however it ends: it is being stopped, so
    its outcome is of no interest (``None``: there is nothing to stop)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
