"""``SyncLedgerClient``: the async client behind blocking calls, for scripts and tools.

It runs ``LedgerClient`` on an event loop in a private thread; each call blocks until the
coroutine finishes there. Use it as a context manager (``with SyncLedgerClient.from_cluster_file(
path, key) as c: c.submit_new(...)``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.contract.api import Receipt
from ledger.tx import SignedTx
from ledger_client.client import LedgerClient

T = TypeVar("T")


class SyncLedgerClient:
    def __init__(self, client: LedgerClient) -> None:
        self.client = client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._call(client.start())
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_cluster_file(
        cls, path: Path | str, key: Ed25519PrivateKey | None = None, **kwargs: Any
    ) -> SyncLedgerClient:
        return cls(LedgerClient.from_cluster_file(path, key, **kwargs))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, tx: SignedTx) -> Receipt:
        return self._call(self.client.submit(tx))

    def submit_new(self, kind: str, body: Mapping[str, Any]) -> Receipt:
        return self._call(self.client.submit_new(kind, body))

    def query(self, path: str, **params: Any) -> Any:
        return self._call(self.client.query(path, **params))

    def height(self) -> int:
        return self._call(self.client.height())

    def block(self, height: int) -> dict[str, Any]:
        return self._call(self.client.block(height))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            self._call(self.client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncLedgerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
