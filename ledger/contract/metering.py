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

What a report may claim is bounded by physics and by time (the contract cannot see the wires, but
it can refuse what no wire could carry): each meter is registered with its connection's import
and export limits in W, and a report of more Wh than limit x 15 minutes is ``IMPLAUSIBLE_ENERGY``;
a report flagged ``gap`` may also carry the limit's worth of each interval just before it that
the meter reported ``missing`` or did not report (the gateway counts a gap's energy when the
meter answers again); an interval that ends after the block's timestamp plus
``report_clock_tolerance_ms`` is ``INTERVAL_IN_FUTURE``; one that starts more than
``report_window_ms`` before it is ``INTERVAL_TOO_OLD``. A feeder meter's reports are stored
like any other but bill nobody: settlement balances the members' reports against them
(balance.py).
"""

from __future__ import annotations

import time
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
    IMPLAUSIBLE_ENERGY,
    INTERVAL_IN_FUTURE,
    INTERVAL_TOO_OLD,
    METER_REVOKED,
    METER_UNCONFIRMED,
    NOT_GATEWAY,
    REPORT_TOO_LATE,
    UNKNOWN_METER,
    Rejected,
)
from ledger.contract.state import ContractState
from ledger.encoding import canonical

REPORT_DOMAIN = b"wattmesh/report/v1\x00"
MAX_INTERVAL_WH = 10**8  # 100 MWh in 15 minutes: far above any community meter
INTERVAL_MS = 15 * 60_000
HOUR_MS = 3_600_000
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


def interval_start_ms(interval: str) -> int:
    """Milliseconds since the epoch (UTC) at which a valid interval ``YYYY-MM-DDTHH:MM`` starts."""
    return f.hour_end_ms(interval[:13]) - HOUR_MS + int(interval[14:16]) * 60_000


MAX_GAP_INTERVALS = 4 * 24  # a gap report may cover at most a day of missing intervals


def _interval_name(start_ms: int) -> str:
    # time.gmtime is calendar arithmetic on the number given: no clock is read
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(start_ms // 1000))


def _gap_span(st: ContractState, meter_id: str, interval: str, flags: Sequence[str]) -> int:
    """Intervals whose energy a report may carry: 1, or for a report flagged ``gap`` also each
    interval just before it that this meter reported ``missing`` (with 0 Wh) or did not report:
    the gateway counts the energy of a gap in the first interval after it, so that nothing is
    lost. Over the span the report is still held to the meter's limit."""
    if "gap" not in flags:
        return 1
    seen = st.data["reports"].get(meter_id, {})
    start = interval_start_ms(interval)
    span = 1
    while span <= MAX_GAP_INTERVALS:
        row = seen.get(_interval_name(start - span * INTERVAL_MS))
        if row is not None and (len(row) < 3 or "missing" not in row[2]):
            break
        span += 1
    return span


def max_interval_wh(limit_w: int) -> int:
    """The most Wh a connection limited to ``limit_w`` W can pass in one interval (rounded down:
    a meter that reports whole Wh never reads more than was there)."""
    return limit_w * INTERVAL_MS // HOUR_MS


def _plausible(
    st: ContractState,
    meter_id: str,
    interval: str,
    imp: int,
    exp: int,
    flags: Sequence[str],
    ctx: BlockContext,
) -> None:
    params = st.data["params"]
    meter = st.data["meters"][meter_id]
    start = interval_start_ms(interval)
    if start + INTERVAL_MS > ctx.timestamp_ms + params["report_clock_tolerance_ms"]:
        raise Rejected(
            INTERVAL_IN_FUTURE,
            f"interval {interval} ends after the block ({ctx.timestamp_ms} ms) plus the "
            f"tolerance of {params['report_clock_tolerance_ms']} ms",
        )
    if start < ctx.timestamp_ms - params["report_window_ms"]:
        raise Rejected(
            INTERVAL_TOO_OLD,
            f"interval {interval} starts over {params['report_window_ms']} ms before the block",
        )
    span = _gap_span(st, meter_id, interval, flags)
    for name, wh, limit in (
        ("import_wh", imp, meter["import_limit_w"]),
        ("export_wh", exp, meter["export_limit_w"]),
    ):
        if wh > span * max_interval_wh(limit):
            raise Rejected(
                IMPLAUSIBLE_ENERGY,
                f"{name} {wh} exceeds the meter's limit of {limit} W for {15 * span} minutes "
                f"({span * max_interval_wh(limit)} Wh)",
            )


def report(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
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
    if meter["gateway_key"] is None:
        raise Rejected(METER_REVOKED, f"the reporting key of {meter_id} is revoked")
    if meter_id in st.data["unconfirmed_meters"]:
        raise Rejected(METER_UNCONFIRMED, f"the owner of {meter_id} has not confirmed it")
    gateway_key = bytes.fromhex(meter["gateway_key"])
    if tx.sender != gateway_key:
        raise Rejected(NOT_GATEWAY, f"reports of {meter_id} must come from its registered gateway")
    signed = report_signing_bytes(meter_id, interval, import_wh, export_wh, flags)
    if not ed25519.verify(gateway_key, signature, signed):
        raise Rejected(BAD_SIGNATURE, "report signature does not verify")
    _plausible(st, meter_id, interval, import_wh, export_wh, flags, ctx)
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
    if meter["role"] == "member":  # a feeder's figures balance the members', they bill nobody
        totals = st.data["hourly"].setdefault(hour, {}).setdefault(meter["owner"], [0, 0])
        totals[0] += import_wh
        totals[1] += export_wh
    result: dict[str, Any] = {"meter_id": meter_id, "interval": interval, "owner": meter["owner"]}
    if flags:
        result["flags"] = flags
    return result
