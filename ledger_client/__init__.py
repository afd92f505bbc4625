"""Client library of the wattmesh ledger: submit signed transactions, read state, trusting a
result only when f+1 replicas agree. See README.md."""

from ledger_client.client import LedgerClient, LedgerError, QueryFailed, RejectedError
from ledger_client.sync import SyncLedgerClient

__all__ = ["LedgerClient", "LedgerError", "QueryFailed", "RejectedError", "SyncLedgerClient"]
