"""A replica's answers to client queries, as the asking key may read them.

``ledger.``-prefixed paths (``ledger.height``, ``ledger.status``, ``ledger.replicas``,
``ledger.block``, ``ledger.receipt``) are answered from the store and the core; the others go
to the contract, through its read policy when it has one (``ledger.contract.api.ReadPolicy``; a
contract without, like the IO tests' toy, answers everything). An answer is an ``answer``
frame: a bad query, a refused read and a contract bug are each an answer with ``ok`` false,
never an exception out of the connection's handler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ledger.client_wire import LEDGER_QUERY_PREFIX
from ledger.contract.api import QueryError, ReadPolicy
from ledger.contract.codes import NOT_PERMITTED
from ledger.encoding import EncodingError, canonical
from ledger.executor import LedgerState

MAX_QUERY_ID = 2**63 - 1


class ReplicaQueries:
    """Answers one replica's queries; ``status`` is the replica's ``ledger.status`` report and
    ``counters`` counts malformed queries and contract errors (``status``'s ``io_`` counters)."""

    def __init__(
        self,
        state: LedgerState,
        me: int,
        status: Callable[[], dict[str, Any]],
        counters: Counter[str],
        replicas: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.state = state
        self.me = me
        self.status = status
        self.counters = counters
        self.replicas = replicas

    def answer(self, message: dict[str, Any], reader: bytes | None = None) -> dict[str, Any]:
        """The ``answer`` frame to a client's ``query`` frame; never raises."""
        qid = message.get("id")
        path = message.get("path")
        params = message.get("params", {})
        if isinstance(qid, bool) or not isinstance(qid, int) or not 0 <= qid <= MAX_QUERY_ID:
            qid = None  # echoed back, so it must be encodable
        out: dict[str, Any] = {"t": "answer", "replica": self.me, "id": qid}
        if qid is None or not isinstance(path, str) or not isinstance(params, dict):
            self.counters["rejected_client_messages"] += 1
            return dict(out, ok=False, value=None, error="query needs id, path and params")
        try:
            value = self.query(path, params, reader)
            canonical(value)
        except (QueryError, EncodingError, ValueError, TypeError, KeyError) as exc:
            return dict(out, ok=False, value=None, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a contract bug answers an error, never kills the connection
            self.counters["query_errors"] += 1
            return dict(out, ok=False, value=None, error=f"internal error: {type(exc).__name__}")
        return dict(out, ok=True, value=value, error="")

    def query(self, path: str, params: dict[str, Any], reader: bytes | None = None) -> Any:
        """Answer a query as ``reader`` may read it: the contract's read policy when the
        contract has one (a contract without, like the IO tests' toy, answers everything);
        heights and status to anyone, whole blocks to the operator, a receipt to the
        transaction's signer and the operator."""
        contract = self.state.contract
        policy = contract if isinstance(contract, ReadPolicy) else None
        if not path.startswith(LEDGER_QUERY_PREFIX):
            if policy is not None:
                return policy.read(path, params, reader)
            return contract.query(path, params)
        if path == "ledger.height":
            return self.state.last_executed()
        if path == "ledger.status":
            return self.status()
        if path == "ledger.replicas" and self.replicas is not None:
            return self.replicas()  # public, as the cluster file is
        chain = policy is None or policy.may_read_chain(reader)
        if path == "ledger.block":
            if not chain:
                raise QueryError(f"{NOT_PERMITTED}: blocks are the operator's to read")
            height = params.get("height")
            if isinstance(height, bool) or not isinstance(height, int):
                raise QueryError("height must be an integer")
            block = self.state.block(height)
            if block is None:
                raise QueryError(f"no block {height}")
            return block.to_wire()
        if path == "ledger.receipt":
            tx_id = params.get("tx_id")
            if not isinstance(tx_id, str):
                raise QueryError("tx_id must be a string")
            found = self.state.receipt(tx_id)
            if found is not None and not chain and self.state.signer(tx_id) != reader:
                raise QueryError(f"{NOT_PERMITTED}: a receipt is its signer's to read")
            return None if found is None else {"height": found[0], "receipt": found[1]}
        raise QueryError(f"unknown query {path!r}")
