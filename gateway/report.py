"""The meter report: the body of a ``meter.report`` transaction and its signature bytes.

signature = Ed25519 over ``b"wattmesh/report/v1\\x00" + canonical({meter_id, interval, import_wh,
export_wh})`` by the gateway key registered for the meter. The contract part verifies these bytes;
this module is the gateway's one place that builds them.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.encoding import canonical

REPORT_DOMAIN = b"wattmesh/report/v1\x00"
REPORT_KIND = "meter.report"


def report_signing_bytes(meter_id: str, interval: str, import_wh: int, export_wh: int) -> bytes:
    return REPORT_DOMAIN + canonical(
        {"meter_id": meter_id, "interval": interval, "import_wh": import_wh, "export_wh": export_wh}
    )


def report_body(
    key: Ed25519PrivateKey, meter_id: str, interval: str, import_wh: int, export_wh: int
) -> dict[str, Any]:
    """The ``meter.report`` body, signed."""
    sig = key.sign(report_signing_bytes(meter_id, interval, import_wh, export_wh)).hex()
    return {
        "meter_id": meter_id,
        "interval": interval,
        "import_wh": import_wh,
        "export_wh": export_wh,
        "signature": sig,
    }


def verify_report(public: Ed25519PublicKey, body: dict[str, Any]) -> bool:
    try:
        public.verify(
            bytes.fromhex(body["signature"]),
            report_signing_bytes(
                body["meter_id"], body["interval"], body["import_wh"], body["export_wh"]
            ),
        )
    except Exception:
        return False
    return True
