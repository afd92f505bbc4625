"""The community on the ledger before the day: who acts (``Actor``: an id and its key, with its
own nonces), the genesis' report window, and registration (``register``: the operator admits
each home with the commitment to its personal data, registers its RES and meter, sells it its
starting tokens; the member confirms its meter and delegates its order key)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.contract.api import Receipt
from ledger.keys import public_hex
from ledger.personal import PersonalStore
from ledger.tx import sign_tx
from tools.demo.feeder import FEEDER_ID, FEEDER_LIMIT_W
from tools.demo.ledger_port import LedgerPort
from tools.demo.world import Home

START_TOKENS = 25_000_000  # micro-tokens every home buys from the operator at the start (25 €)
OPERATOR = "OPERATOR"
IMPORT_LIMIT_W = 13_800  # every home's contracted power: 60 A at 230 V


def report_window_ms(date: dt.date) -> int:
    """The contract takes reports of intervals up to its report window before the block's time.
    The replicas stamp blocks with today's time while the demo replays a past day, so the
    demo's community widens the window from its default (7 days) to reach back to that day."""
    day0 = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC)
    return max(7 * 86_400_000, int((dt.datetime.now(dt.UTC) - day0).total_seconds()) * 1000
               + 2 * 86_400_000)


class DemoError(RuntimeError):
    """The demo could not go on (a part failed to start, the ledger refused a setup step)."""


@dataclass
class Actor:
    id_grid: str
    key: Ed25519PrivateKey
    nonce: int = 0

    def next_nonce(self) -> int:
        self.nonce += 1
        return self.nonce


async def submit(ledger: LedgerPort, actor: Actor, kind: str, body: Mapping[str, Any], *,
                 must: bool = True) -> Receipt:
    """``kind`` signed by ``actor`` with its next nonce; refused, a ``DemoError`` when ``must``."""
    signed = sign_tx(actor.key, kind, body, actor.next_nonce())
    receipt = await ledger.submit(signed)
    if must and not receipt.ok:
        raise DemoError(f"{kind} by {actor.id_grid} refused: {receipt.code} {receipt.message}")
    return receipt


@dataclass(frozen=True)
class CommunityKeys:
    """Each home's keys: the member's wallet key (transfers, votes, key changes; it stays with
    the member, here the demo), and on its gateway the meter key (reports only) and the order
    key the member delegates to the gateway's trading agent (offers, bids only); the key of the
    operator's gateway at the feeder."""

    wallet: dict[str, Ed25519PrivateKey]
    meter: dict[str, Ed25519PrivateKey]
    order: dict[str, Ed25519PrivateKey]
    feeder: Ed25519PrivateKey


async def register(ledger: LedgerPort, op: Actor, homes: list[Home], keys: CommunityKeys,
                   run_dir: Path) -> None:
    """Every home registered by the operator ``op`` (its personal data into the operator's
    register in ``run_dir``), and the feeder meter."""
    async def tx(actor: Actor, kind: str, body: Mapping[str, Any]) -> Receipt:
        return await submit(ledger, actor, kind, body)

    # personal data stays with the operator (its register, mode 0600); the chain holds a
    # salted hash of it
    personal = PersonalStore(run_dir / "personal.sqlite")
    try:
        commitments = {h.id_grid: personal.add(
            h.id_grid, h.name, f"{h.id_grid.lower()}@community.invalid",
            f"{h.name}'s home, the community")[0] for h in homes}
    finally:
        personal.close()
    for h in homes:
        role = "prosumer" if h.pv_w else "consumer"
        await tx(op, "registry.admit", {
            "id_grid": h.id_grid, "commitment": commitments[h.id_grid],
            "public_key": public_hex(keys.wallet[h.id_grid]), "role": role,
        })
        if h.pv_w:
            await tx(op, "registry.add_res", {
                "res_id": h.res_id, "owner": h.id_grid, "kind": "PV",
                "rated_power_w": h.pv_w,
            })
        await tx(op, "registry.add_meter", {
            "meter_id": h.meter_id, "owner": h.id_grid,
            "gateway_key": public_hex(keys.meter[h.id_grid]),
            # the connection's limits: contracted import power, the inverter's export
            "import_limit_w": IMPORT_LIMIT_W, "export_limit_w": h.pv_w,
        })
        # the member recognises its gateway's key (the meter may report: its owner's
        # consent) and delegates an order key to the gateway's trading agent
        member = Actor(h.id_grid, keys.wallet[h.id_grid])
        await tx(member, "meter.confirm", {"meter_id": h.meter_id})
        await tx(member, "member.set_order_key", {
            "id_grid": h.id_grid, "public_key": public_hex(keys.order[h.id_grid])})
        await tx(op, "token.transfer", {"to": h.id_grid, "amount": START_TOKENS})
    await tx(op, "registry.add_meter", {
        "meter_id": FEEDER_ID, "owner": OPERATOR, "role": "feeder",
        "gateway_key": public_hex(keys.feeder),
        "import_limit_w": FEEDER_LIMIT_W, "export_limit_w": FEEDER_LIMIT_W,
    })
    await tx(op, "meter.confirm", {"meter_id": FEEDER_ID})  # the operator's own meter
