"""The meter report the gateway signs at each interval end.

The body of a ``meter.report`` transaction and its signature bytes are defined once, by the
contract (``ledger.contract.sign_report`` / ``report_signing_bytes``); this module only turns a
closed ``Interval`` into that body.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.intervals import Interval, flag_names
from ledger.contract import report_signing_bytes, sign_report

REPORT_KIND = "meter.report"


SCOPE_SEP = ":"  # "<member>:<meter_id>": the ledger allows ":" in ids, a gateway id does not


def ledger_meter_id(member: str | None, meter_id: str) -> str:
    """The meter's id on the ledger: scoped by the member, so meter ids are per home (every home
    has a "grid" meter). Without a member (a gateway configured before scoping): as it is."""
    return meter_id if member is None else f"{member}{SCOPE_SEP}{meter_id}"


def report_body(
    key: Ed25519PrivateKey, interval: Interval, member: str | None = None
) -> dict[str, Any]:
    """The signed ``meter.report`` body of a closed interval, with its quality flags (clipped,
    gap, missing, ...: see ``gateway.intervals``) when it has any; the meter named as the ledger
    knows it (``ledger_meter_id``)."""
    return sign_report(
        key,
        ledger_meter_id(member, interval.meter_id),
        interval.name,
        interval.import_wh,
        interval.export_wh,
        flag_names(interval.flags),
    )


def verify_report(public: Ed25519PublicKey, body: dict[str, Any]) -> bool:
    try:
        public.verify(
            bytes.fromhex(body["signature"]),
            report_signing_bytes(
                body["meter_id"],
                body["interval"],
                body["import_wh"],
                body["export_wh"],
                body.get("flags", ()),
            ),
        )
    except Exception:
        return False
    return True
