"""The community's feeder meter in the demo, and the member whose gateway over-reports.

The operator's gateway reads an emulated SDM630 at the community's connection to the grid: it
measures what every home's billing meter measures, summed at each instant, plus the losses of
the lines (``LINE_LOSS`` of the power flowing through them), and its signed reports go to the
ledger as the feeder's (``registry.add_meter`` with ``role: "feeder"``). At settlement the
contract balances each interval of the homes' reports against them.

``--faults`` adds a prosumer whose gateway lies: for one night hour it rewrites its billing
meter's reports before they leave, claiming its inverter ran at its export limit all hour, and
re-signs them (the key is on its own Pi). The limit check cannot see this (the claim is within
the inverter's limit); the feeder can. ``feeder_checks`` says whether the lie was caught, cut,
and the honest members' settlement left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.contract import sign_report
from ledger.contract.metering import max_interval_wh
from ledger.tx import SignedTx, sign_tx
from tools.demo.record import Check

FEEDER_ID = "FEEDER"
FEEDER_MODEL = "sdm630"
FEEDER_LIMIT_W = 250_000  # the transformer's rating, both ways
LINE_LOSS = 0.015  # of the power through the lines, lost in them


def feeder_power(homes: Iterable[Callable[[int], float]]) -> Callable[[int], float]:
    """The feeder meter's power (W, export negative) at a time: the homes' sum plus losses."""
    parts = list(homes)

    def power(t_ms: int) -> float:
        values = [p(t_ms) for p in parts]
        return sum(values) + LINE_LOSS * sum(abs(v) for v in values)

    return power


@dataclass
class Liar:
    """A member whose gateway inflates its export in the intervals of ``hour``."""

    id_grid: str
    meter_id: str
    key: Ed25519PrivateKey
    export_limit_w: int
    hour: str  # listing id of the hour it lies in
    told: dict[str, tuple[int, int]] = field(default_factory=dict)  # interval -> (true, claimed)

    def tamper(self, tx: SignedTx) -> SignedTx:
        body = tx.body
        interval = str(body.get("interval", ""))
        if (tx.kind != "meter.report" or body.get("meter_id") != self.meter_id
                or not interval.startswith(self.hour)):
            return tx
        true_export = int(body["export_wh"])
        claimed = max(true_export, max_interval_wh(self.export_limit_w))
        self.told[interval] = (true_export, claimed)
        lie = sign_report(self.key, self.meter_id, interval, int(body["import_wh"]), claimed,
                          list(body.get("flags", [])))
        return sign_tx(self.key, tx.kind, lie, tx.nonce)  # same nonce: retries stay one tx


def feeder_checks(settlements: Mapping[str, Mapping[str, Any]], liar: Liar | None) -> list[Check]:
    """From each settled hour's ledger settlement (``lines`` and ``balance``)."""
    windows = [(h, w) for h, s in settlements.items() for w in s.get("balance", [])]
    bad = [f"{w['interval']} ({w['status']}, loss {w.get('loss_wh')} Wh, allowed "
           f"{w.get('allowed_wh')} Wh)" for h, w in windows
           if w["status"] != "balanced" and (liar is None or h != liar.hour)]
    checks = [Check(
        "the community balances against its feeder meter", bool(windows) and not bad,
        "; ".join(bad[:3]) if bad else
        f"{len(windows)} windows of the homes' reports balanced against the feeder meter "
        f"within the tolerance (losses {100 * LINE_LOSS:.1f} % of the flow)")]
    if liar is None:
        return checks
    settled = settlements.get(liar.hour) or {"lines": [], "balance": []}
    lines = {ln["id_grid"]: ln for ln in settled["lines"]}
    mine = lines.get(liar.id_grid)
    lie_wh = sum(claimed - true for true, claimed in liar.told.values())
    allowed = sum(w.get("allowed_wh", 0) for w in settled["balance"])
    caught = (mine is not None and lie_wh > 0
              and mine["exported_wh"] <= mine["reported_export_wh"] - lie_wh + allowed
              and any(w["status"] == "unbalanced" for w in settled["balance"]))
    honest_cut = [f"{ln['id_grid']} in {h}: {ln['export_cut_wh']} Wh"
                  for h, s in settlements.items() for ln in s["lines"]
                  if ln["id_grid"] != liar.id_grid and ln["export_cut_wh"]]
    checks.append(Check(
        "over-reporting gateway caught", caught and not honest_cut,
        (f"{liar.id_grid} claimed {lie_wh} Wh of export in {liar.hour} that its inverter never "
         f"gave (within its {liar.export_limit_w} W limit, so the limit check passed it); the "
         f"feeder meter did not see it: the hour was flagged unbalanced and "
         f"{mine['export_cut_wh'] if mine else 0} Wh of its claim cut; no honest member's "
         "export was cut in any hour, so their settlement is what it would have been")
        if caught and not honest_cut else
        f"not caught: lie {lie_wh} Wh, line {mine}; honest members cut: {honest_cut[:3]}"))
    return checks
