"""Signed meter reports: per meter and 15-minute interval, imported and exported Wh.

The gateway that a meter is registered to signs ``REPORT_DOMAIN + canonical({meter_id, interval,
import_wh, export_wh})`` with Ed25519 and sends the report in a transaction signed by that same
key. The contract checks both, refuses duplicates, and adds the Wh to the owner's hourly totals,
from which ``auction.settle`` settles the hour. Exported Wh are the member's energy tokens for
that hour (see settlement.py).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.codes import (
    BAD_SIGNATURE,
    DUPLICATE_REPORT,
    NOT_GATEWAY,
    REPORT_TOO_LATE,
    UNKNOWN_METER,
    Rejected,
)
from ledger.contract.state import State
from ledger.encoding import canonical

REPORT_DOMAIN = b"wattmesh/report/v1\x00"
MAX_INTERVAL_WH = 10**8  # 100 MWh in 15 minutes: far above any community meter


def report_signing_bytes(meter_id: str, interval: str, import_wh: int, export_wh: int) -> bytes:
    """The exact bytes a gateway signs for one report (one definition, used by both sides)."""
    return REPORT_DOMAIN + canonical(
        {"meter_id": meter_id, "interval": interval, "import_wh": import_wh, "export_wh": export_wh}
    )


def sign_report(
    key: Ed25519PrivateKey, meter_id: str, interval: str, import_wh: int, export_wh: int
) -> dict[str, Any]:
    """The body of a ``meter.report`` transaction, signed by the gateway's key."""
    signature = key.sign(report_signing_bytes(meter_id, interval, import_wh, export_wh))
    return {
        "meter_id": meter_id,
        "interval": interval,
        "import_wh": import_wh,
        "export_wh": export_wh,
        "signature": signature.hex(),
    }


def report(st: State, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("meter_id", "interval", "import_wh", "export_wh", "signature"))
    meter_id = f.ident(body, "meter_id")
    interval = f.interval(body)
    import_wh = f.non_negative(body, "import_wh", MAX_INTERVAL_WH)
    export_wh = f.non_negative(body, "export_wh", MAX_INTERVAL_WH)
    signature = f.signature_hex(body, "signature")
    meter = st.data["meters"].get(meter_id)
    if meter is None:
        raise Rejected(UNKNOWN_METER, f"no meter {meter_id}")
    gateway_key = bytes.fromhex(meter["gateway_key"])
    if tx.sender != gateway_key:
        raise Rejected(NOT_GATEWAY, f"reports of {meter_id} must come from its registered gateway")
    signed = report_signing_bytes(meter_id, interval, import_wh, export_wh)
    if not ed25519.verify(gateway_key, signature, signed):
        raise Rejected(BAD_SIGNATURE, "report signature does not verify")
    seen = st.data["reports"].get(meter_id)
    if seen is not None and interval in seen:
        raise Rejected(DUPLICATE_REPORT, f"{meter_id} already reported {interval}")
    hour = interval[:13]
    listing = st.data["listings"].get(hour)
    if listing is not None and listing["state"] == "SETTLED":
        raise Rejected(REPORT_TOO_LATE, f"hour {hour} is already settled")
    st.data["reports"].setdefault(meter_id, {})[interval] = [import_wh, export_wh]
    totals = st.data["hourly"].setdefault(hour, {}).setdefault(meter["owner"], [0, 0])
    totals[0] += import_wh
    totals[1] += export_wh
    return {"meter_id": meter_id, "interval": interval, "owner": meter["owner"]}
