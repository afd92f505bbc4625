"""The registry's audit log: every change to who may do what, in the state, in order.

Every accepted admission, RES and meter registration, key rotation or revocation, quorum
proposal and approval is appended as ``{height, index, kind, by, body}`` (``by``: the member who
signed it, as it was before the transaction). The blocks hold the same transactions; the log lets
every member check the operator's registry work with one query (``registry_log``) instead of
reading the whole chain. Bodies hold keys and commitments only: personal data is never on chain.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ledger.contract.api import BlockContext, Transaction
from ledger.contract.state import ContractState

AUDITED = frozenset(
    {
        "registry.admit",
        "registry.add_res",
        "registry.add_meter",
        "member.rotate_key",
        "member.revoke_key",
        "member.set_order_key",
        "meter.confirm",
        "meter.rotate_key",
        "meter.revoke",
        "quorum.propose",
        "quorum.approve",
    }
)
PAGE = 1000  # entries per ``registry_log`` answer


def record(st: ContractState, tx: Transaction, ctx: BlockContext, by: str | None) -> None:
    """Append an accepted registry transaction (the caller checked ``tx.kind in AUDITED``)."""
    body: Mapping[str, Any] = tx.body
    st.data["registry_log"].append(
        {
            "height": ctx.height,
            "index": ctx.index,
            "kind": tx.kind,
            "by": by,
            "body": copy.deepcopy(dict(body)),
        }
    )
