"""The deterministic contract the ledger replicas execute: registry, tokens, the hourly auction
of the paper, signed meter reports and settlement. See README.md for every transaction kind,
body schema, error code and query path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.contract.api import Contract, QueryError, Receipt, Value
from ledger.contract.clearing import Clearing, Order, Trade, book_orders, clear, payment
from ledger.contract.community import GENESIS_VERSION, CommunityContract
from ledger.contract.metering import (
    REPORT_DOMAIN,
    REPORT_FLAGS,
    report_signing_bytes,
    sign_report,
)
from ledger.contract.params import DEFAULTS, GenesisError, check_params

__all__ = [
    "DEFAULTS",
    "REPORT_DOMAIN",
    "REPORT_FLAGS",
    "Clearing",
    "CommunityContract",
    "Contract",
    "GenesisError",
    "Order",
    "QueryError",
    "Receipt",
    "Trade",
    "book_orders",
    "clear",
    "default_genesis",
    "make_contract",
    "payment",
    "report_signing_bytes",
    "sign_report",
]


def make_contract(genesis: Mapping[str, Value]) -> Contract:
    """A fresh community contract at the state the genesis describes. Raises ``GenesisError``
    (a ``ValueError``) naming the bad key."""
    return CommunityContract(genesis)


def default_genesis(
    operator_public_key_hex: str,
    *,
    operator_id_grid: str = "OPERATOR",
    operator_commitment: str = "00" * 32,
    treasury: int = 0,
    **params: Any,
) -> dict[str, Any]:
    """A genesis with one operator member and community parameters (``DEFAULTS`` overridden by
    ``params``, e.g. ``clearing_rule="uniform"``, ``retail_offpeak=60_000``). ``treasury``:
    micro-tokens allocated to the operator, the whole supply until a quorum of members mints
    more. ``operator_commitment``: the commitment to the operator's personal data
    (``ledger.personal``); an organisation may leave the all-zero default."""
    genesis: dict[str, Any] = {
        "version": GENESIS_VERSION,
        "params": check_params(params),
        "members": [
            {
                "id_grid": operator_id_grid,
                "commitment": operator_commitment,
                "public_key": operator_public_key_hex,
                "role": "operator",
            }
        ],
    }
    if treasury:
        genesis["allocations"] = {operator_id_grid: treasury}
    CommunityContract(genesis)  # validate now, so a bad key is reported where it was given
    return genesis
