"""Signed meter reports: per meter and 15-minute interval, imported and exported Wh.

The gateway that a meter is registered to signs ``REPORT_DOMAIN + canonical({meter_id, interval,
import_wh, export_wh[, flags]})`` with Ed25519 and sends the report in a transaction signed by
that same key. The contract checks both, refuses duplicates, and adds the Wh to the owner's
hourly totals, from which ``auction.settle`` settles the hour. Exported Wh are the member's
energy tokens for that hour (see settlement.py).

``flags`` says how the interval's energy was measured, in the gateway's words (``REPORT_FLAGS``:
a counter reset or rollover, a gap in the samples, no data, an implausible counter set aside, a
rebased counter, a counter restored after a restart, a late close, a clipped current clamp that
reads low, a node whose sampling fell behind its period, a meter that cannot tell export from
import). It is signed with the figures, stored with them and answered by the ``reports``
query, so that whoever settles or disputes an hour sees which figures were measured cleanly; it
does not change settlement. A report without flags omits the field, and signs exactly the bytes
it signed before flags existed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.codes import (
    BAD_BODY,
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
# The quality flags a report may carry, in their one order (a report lists its flags in this
# order, each once). The gateway numbers its interval flags from this tuple (bit i = entry i).
REPORT_FLAGS = (
    "reset",
    "rollover",
    "gap",
    "missing",
    "implausible",
    "rebased",
    "restored",
    "late",
    "clipped",
    "behind",  # a node's CT sampling fell behind its period in a window of this interval
    "sign_unknown",  # the meter cannot tell import from export (PZEM-004T): all read as import
)
FIELDS = ("meter_id", "interval", "import_wh", "export_wh", "signature")


def _signed_fields(
    meter_id: str, interval: str, import_wh: int, export_wh: int, flags: Sequence[str]
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "meter_id": meter_id,
        "interval": interval,
        "import_wh": import_wh,
        "export_wh": export_wh,
    }
    if flags:
        fields["flags"] = list(flags)
    return fields


def report_signing_bytes(
    meter_id: str, interval: str, import_wh: int, export_wh: int, flags: Sequence[str] = ()
) -> bytes:
    """The exact bytes a gateway signs for one report (one definition, used by both sides)."""
    return REPORT_DOMAIN + canonical(
        _signed_fields(meter_id, interval, import_wh, export_wh, flags)
    )


def sign_report(
    key: Ed25519PrivateKey,
    meter_id: str,
    interval: str,
    import_wh: int,
    export_wh: int,
    flags: Sequence[str] = (),
) -> dict[str, Any]:
    """The body of a ``meter.report`` transaction, signed by the gateway's key: the signed
    fields plus ``signature``. ``flags``: names from ``REPORT_FLAGS`` in that order (none: the
    field is left out)."""
    signed = report_signing_bytes(meter_id, interval, import_wh, export_wh, flags)
    body = _signed_fields(meter_id, interval, import_wh, export_wh, flags)
    body["signature"] = key.sign(signed).hex()
    return body


def report_flags(body: Mapping[str, Any]) -> list[str]:
    """The report's flags: absent, or a non-empty list of ``REPORT_FLAGS`` names in their order,
    each once (so that one report has one encoding)."""
    if "flags" not in body:
        return []
    flags = body["flags"]
    if (
        not isinstance(flags, list)
        or not flags
        or not all(isinstance(x, str) and x in REPORT_FLAGS for x in flags)
    ):
        raise Rejected(BAD_BODY, f"flags must be a non-empty list of {list(REPORT_FLAGS)}")
    order = [REPORT_FLAGS.index(x) for x in flags]
    if order != sorted(set(order)):
        raise Rejected(BAD_BODY, f"flags must be listed once each, in the order {REPORT_FLAGS}")
    return list(flags)


def report(st: State, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, (*FIELDS, "flags") if "flags" in body else FIELDS)
    meter_id = f.ident(body, "meter_id")
    interval = f.interval(body)
    import_wh = f.non_negative(body, "import_wh", MAX_INTERVAL_WH)
    export_wh = f.non_negative(body, "export_wh", MAX_INTERVAL_WH)
    signature = f.signature_hex(body, "signature")
    flags = report_flags(body)
    meter = st.data["meters"].get(meter_id)
    if meter is None:
        raise Rejected(UNKNOWN_METER, f"no meter {meter_id}")
    gateway_key = bytes.fromhex(meter["gateway_key"])
    if tx.sender != gateway_key:
        raise Rejected(NOT_GATEWAY, f"reports of {meter_id} must come from its registered gateway")
    signed = report_signing_bytes(meter_id, interval, import_wh, export_wh, flags)
    if not ed25519.verify(gateway_key, signature, signed):
        raise Rejected(BAD_SIGNATURE, "report signature does not verify")
    seen = st.data["reports"].get(meter_id)
    if seen is not None and interval in seen:
        raise Rejected(DUPLICATE_REPORT, f"{meter_id} already reported {interval}")
    hour = interval[:13]
    listing = st.data["listings"].get(hour)
    if listing is not None and listing["state"] == "SETTLED":
        raise Rejected(REPORT_TOO_LATE, f"hour {hour} is already settled")
    # [import_wh, export_wh], and the flags third when there are any
    st.data["reports"].setdefault(meter_id, {})[interval] = [
        import_wh,
        export_wh,
        *([flags] if flags else []),
    ]
    totals = st.data["hourly"].setdefault(hour, {}).setdefault(meter["owner"], [0, 0])
    totals[0] += import_wh
    totals[1] += export_wh
    result: dict[str, Any] = {"meter_id": meter_id, "interval": interval, "owner": meter["owner"]}
    if flags:
        result["flags"] = flags
    return result
