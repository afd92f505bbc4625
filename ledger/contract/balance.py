"""The community balance check: members' meter reports against the feeder meter, per interval.

The community's connection to the grid has its own meter (registered with role ``feeder``: at
the transformer or the feeder, read by the operator's gateway, or the DSO's data signed by a key
registered for it). Energy is conserved on the community's wires, so in every interval

    feeder import - feeder export = members' import - members' export + losses

where the losses are small and positive. ``loss_wh`` is the left side minus the members' net;
the interval balances when ``|loss_wh| <= allowed_wh``, with ``allowed_wh`` the genesis's
``feeder_tolerance_permille`` of the members' metered flow (import plus export) plus 1 Wh per
report (each report is rounded to the Wh).

An interval whose ``loss_wh`` is above the allowance has members claiming more export (or less
import) than the feeder saw: the claimed exports are cut by the excess before settlement, so
that the exports paid never exceed what the members' imports and the feeder's export can
account for. **Rule: the largest claims are cut first, down to a common level** (the level λ
with sum(max(0, export - λ)) = excess; whole Wh, the remainder given back one Wh each in id
order). Why: the contract cannot tell who lied, but a lie worth anything is a large claim; an
inflated claim above everyone else's is cut back alone and the honest members' settlement does
not change, where pro-rata scaling would take a share of every honest exporter's energy and
leave the liar a share of its lie. A lie small enough to hide among the honest claims can cost
the largest honest exporters at most that lie; the interval is flagged for the operator either
way. An interval below the allowance (more import than the feeder saw: an over-reported import
or an under-reported export) harms only the reporter and is flagged, not changed.

Where a member's report in the hour is flagged ``missing`` or ``gap`` (its meter did not answer
and the energy of the gap came in a later interval), the hour is checked as one window
(``quarters`` 4), so that energy displaced within the hour balances. Without a feeder meter the
check is off (``[]``); a window for which some feeder meter has no report is ``unchecked`` and
settled as reported (the operator reads the feeder, and its missing
report is on the ledger for all to see).
"""

from __future__ import annotations

from typing import Any

from ledger.contract.state import ContractState

QUARTERS = ("00", "15", "30", "45")
BALANCED = "balanced"
UNBALANCED = "unbalanced"
UNCHECKED = "unchecked"


def cut_largest_first(claims: dict[str, int], excess: int) -> dict[str, int]:
    """Remove ``excess`` Wh from ``claims`` (member -> Wh), the largest first, down to a common
    level; returns what each member keeps. Deterministic: ties and the remainder by member id."""
    total = sum(claims.values())
    if excess >= total:
        return dict.fromkeys(claims, 0)
    if excess <= 0:
        return dict(claims)

    def cut_at(level: int) -> int:
        return sum(wh - level for wh in claims.values() if wh > level)

    low, high = 0, max(claims.values())  # cut_at(low) >= excess > cut_at(high) == 0
    while high - low > 1:
        mid = (low + high) // 2
        if cut_at(mid) >= excess:
            low = mid
        else:
            high = mid
    kept = {m: min(wh, low) for m, wh in claims.items()}
    give_back = cut_at(low) - excess  # fewer than the members above the level
    for member in sorted(m for m, wh in claims.items() if wh > low):
        if not give_back:
            break
        kept[member] += 1
        give_back -= 1
    return kept


DISPLACING = ("missing", "gap")  # flags of a report whose energy belongs to other intervals


def _windows(st: ContractState, hour: str, meters: list[str]) -> list[list[str]]:
    """The intervals checked together: each on its own, or the whole hour as one window when a
    member's report in it says its energy was displaced in time (a meter that did not answer
    reports ``missing`` with 0 Wh, and its next report carries the gap's energy, ``gap``)."""
    intervals = [f"{hour}:{q}" for q in QUARTERS]
    reports = st.data["reports"]
    for meter_id in meters:
        for interval in intervals:
            row = reports.get(meter_id, {}).get(interval)
            if row is not None and len(row) > 2 and any(x in DISPLACING for x in row[2]):
                return [intervals]
    return [[i] for i in intervals]


def check_hour(st: ContractState, hour: str) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The members' credited export of ``hour`` (member -> Wh, after any cut) and one record per
    window of the check (empty when the community has no feeder meter)."""
    meters = st.data["meters"]
    reports = st.data["reports"]
    feeders = sorted(m for m, rec in meters.items() if rec["role"] == "feeder")
    members = sorted(m for m, rec in meters.items() if rec["role"] == "member")
    credited: dict[str, int] = {}
    checks: list[dict[str, Any]] = []
    tolerance = st.data["params"]["feeder_tolerance_permille"]
    for window in _windows(st, hour, members):
        imports: dict[str, int] = {}
        exports: dict[str, int] = {}
        n_reports = 0
        for meter_id in members:
            for interval in window:
                row = reports.get(meter_id, {}).get(interval)
                if row is None:
                    continue
                owner = meters[meter_id]["owner"]
                imports[owner] = imports.get(owner, 0) + row[0]
                exports[owner] = exports.get(owner, 0) + row[1]
                n_reports += 1
        kept = exports
        if feeders:
            rows = [reports.get(m, {}).get(i) for m in feeders for i in window]
            m_imp, m_exp = sum(imports.values()), sum(exports.values())
            record: dict[str, Any] = {
                "interval": window[0],
                "quarters": len(window),
                "members_import_wh": m_imp,
                "members_export_wh": m_exp,
            }
            if any(row is None for row in rows):
                record |= {"status": UNCHECKED, "export_cut_wh": 0}
            else:
                f_imp = sum(row[0] for row in rows if row is not None)
                f_exp = sum(row[1] for row in rows if row is not None)
                loss = (f_imp - f_exp) - (m_imp - m_exp)
                allowed = (m_imp + m_exp) * tolerance // 1000 + n_reports + len(rows)
                excess = loss - allowed
                if excess > 0:
                    kept = cut_largest_first(exports, excess)
                record |= {
                    "feeder_import_wh": f_imp,
                    "feeder_export_wh": f_exp,
                    "loss_wh": loss,
                    "allowed_wh": allowed,
                    "status": BALANCED if abs(loss) <= allowed else UNBALANCED,
                    "export_cut_wh": m_exp - sum(kept.values()),
                }
            checks.append(record)
        for member, wh in kept.items():
            credited[member] = credited.get(member, 0) + wh
    return credited, checks
