"""The demo's report: ``summary.json`` (the figures) and ``report.html`` (one self-contained file
with the pictures embedded as base64 PNGs, drawn with matplotlib's Agg backend)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ledger.contract.clearing import Order
from ledger.contract.params import RULES
from tools.demo.economics import Tariffs, compare_rules, deviations, ratio
from tools.demo.record import DayRecord, HourResult

MAX_CURVE_PANELS = 24


def _eur(utok: int) -> float:
    return round(utok / 1_000_000, 4)


def summary(record: DayRecord, tariffs: Tariffs) -> dict[str, Any]:
    books = [h.book for h in record.hours]
    costs = compare_rules(books, tariffs, RULES)
    for value in costs.values():
        assert isinstance(value, dict)
        value["community_cost_eur"] = _eur(int(value["community_cost_utok"]))
    hours = []
    for h in record.hours:
        hours.append({
            "listing_id": h.listing_id,
            "offers": len(h.book.offers),
            "bids": len(h.book.bids),
            "mcp_utok_per_kwh": h.mcp,
            "traded_wh": h.traded_wh,
            # the ledger's own clearing: gains realised against the efficient allocation's
            "efficiency": ratio(*h.gains) if h.gains is not None else None,
            "kwh_available_wh": h.kwh_available,
            "kwh_wanted_wh": h.kwh_wanted,
            "grid_import_wh": h.grid_import_wh,  # billed at settlement (the ledger's lines)
            "grid_export_wh": h.grid_export_wh,
            "net_import_wh": h.net_import_wh,  # the community's net flow, not what is billed
            "net_export_wh": h.net_export_wh,
            "settled": h.settled,
            "settlement_lines": h.settlement or [],
            # the contract's check of the homes' reports against the feeder meter
            "balance": h.balance or [],
            "relay_actions": h.relay_actions,
            "trades": h.trades,
            "order_book": {
                "offers": [o._asdict() for o in h.book.offers],
                "bids": [b._asdict() for b in h.book.bids],
            },
            "metered": {k: {"import_wh": v[0], "export_wh": v[1]}
                        for k, v in sorted(h.book.metered.items())},
            "note": h.note,
        })
    return {
        "date": record.date,
        "clearing_rule": record.rule,
        "tariffs_utok_per_kwh": {
            "retail_peak": tariffs.retail_peak,
            "retail_offpeak": tariffs.retail_offpeak,
            "feed_in": tariffs.feed_in,
            "peak_hours": list(tariffs.peak_hours),
        },
        "households": record.households,
        "totals": {
            "offers": sum(len(h.book.offers) for h in record.hours),
            "bids": sum(len(h.book.bids) for h in record.hours),
            "traded_wh": sum(h.traded_wh for h in record.hours),
            "grid_import_wh": sum(h.grid_import_wh for h in record.hours),
            "grid_export_wh": sum(h.grid_export_wh for h in record.hours),
            "net_import_wh": sum(h.net_import_wh for h in record.hours),
            "net_export_wh": sum(h.net_export_wh for h in record.hours),
        },
        "cost_comparison": costs,
        "hours": hours,
        "load_w": {
            "slots": record.slot_labels,
            "before_ems": record.load_before_w,
            "after_ems": record.load_after_w,
            "pv": record.pv_w,
            "metered_net": record.metered_net_w,
        },
        "balances_utok": [{"at": label, "balances": b} for label, b in record.balances],
        "faults": [asdict(f) for f in record.faults],
        "checks": [asdict(c) for c in record.checks],
        "ok": record.ok,
        "parts": record.parts,
        "counters": record.counters,
        "sub_metered_wh": record.sub_metered_wh,
        "sub_planned_wh": record.sub_planned_wh,
        "timings_s": record.timings,
        "forecast": record.forecast,
        "demand_response": _dr_summary(record),
        "settlement_deviations": _deviation_totals(record),
    }


def _deviation_totals(record: DayRecord) -> dict[str, int]:
    """Over the day: what the homes traded on their forecasts and failed to meter."""
    total = {"seller_shortfall_wh": 0, "sellers_short": 0, "buyer_excess_wh": 0,
             "buyers_in_excess": 0}
    for h in record.hours:
        for k, v in deviations(h.trades, h.book.metered).items():
            total[k] += v
    return total


def _dr_summary(record: DayRecord) -> dict[str, Any]:
    """The request and the community's peak in its window: planned before and after the EMS,
    and as metered (from the signed reports)."""
    dr = dict(record.demand_response)
    if dr and record.metered_net_w:
        lo, hi = (int(x[:2]) * 4 for x in str(dr["window"]).split("-"))
        metered = record.metered_net_w[lo:hi]
        if metered:
            dr["peak_in_window_metered_net_w"] = max(metered)
    return dr


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _steps(orders: list[Order], descending: bool) -> tuple[list[float], list[float]]:
    """Cumulative kWh against price: the supply (ascending) or demand (descending) staircase."""
    ordered = sorted(orders, key=lambda o: (-o.price if descending else o.price, o.seq))
    xs, ys, total = [0.0], [], 0
    for o in ordered:
        price = o.price / 1_000_000
        ys.extend([price, price])
        total += o.wh
        xs.append(total / 1000)
        xs.append(total / 1000)
    return xs[:-1], ys


def curves_figure(hours: list[HourResult]) -> Figure:
    """The paper's Figure 12 per hour: supply and demand staircases and the clearing price."""
    shown = [h for h in hours if h.book.offers or h.book.bids][:MAX_CURVE_PANELS]
    n = max(1, len(shown))
    cols = min(6, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, h in zip(axes.flat, shown, strict=False):
        ax.set_visible(True)
        if h.book.offers:
            xs, ys = _steps(h.book.offers, descending=False)
            ax.plot(xs, ys, color="tab:green", label="supply (offers)")
        if h.book.bids:
            xs, ys = _steps(h.book.bids, descending=True)
            ax.plot(xs, ys, color="tab:blue", label="demand (bids)")
        if h.mcp is not None:
            ax.axhline(h.mcp / 1_000_000, color="tab:red", linestyle="--", label="MCP")
        ax.set_title(f"{h.listing_id[-2:]}:00  MCP {h.mcp / 1e6:.4f}" if h.mcp is not None
                     else f"{h.listing_id[-2:]}:00  no clearing", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("kWh", fontsize=7)
        ax.set_ylabel("€/kWh", fontsize=7)
    from matplotlib.lines import Line2D

    fig.legend(
        [Line2D([], [], color="tab:green"), Line2D([], [], color="tab:blue"),
         Line2D([], [], color="tab:red", linestyle="--")],
        ["supply (RESOffers, by reserve price)", "demand (BuyOffers, by bid price)",
         "market clearing price (MCP)"],
        loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.985))
    fig.suptitle("Supply and demand of each hourly auction, with its market clearing price",
                 y=1.02)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def load_figure(record: DayRecord) -> Figure:
    """The paper's Figure 8 for the community: load before and after the EMS, and PV."""
    fig, ax = plt.subplots(figsize=(10, 4.4))
    x = [i / 4 for i in range(len(record.load_before_w))]
    ax.step(x, [w / 1000 for w in record.load_before_w], where="post", color="tab:gray",
            label="load without EMS")
    ax.step(x, [w / 1000 for w in record.load_after_w], where="post", color="tab:blue",
            label="load with EMS (scheduled)")
    ax.fill_between(x, [w / 1000 for w in record.pv_w], step="post", color="gold", alpha=0.4,
                    label="PV production")
    if record.metered_net_w:
        ax.step(x[:len(record.metered_net_w)], [w / 1000 for w in record.metered_net_w],
                where="post", color="black", linewidth=0.8,
                label="metered net import (signed reports)")
    if record.demand_response:
        lo, hi = (int(x[:2]) for x in str(record.demand_response["window"]).split("-"))
        ax.axvspan(lo, hi, color="tab:purple", alpha=0.12,
                   label=f"demand-response request "
                         f"(<= {record.demand_response['request_max_w_per_home'] / 1000:.1f} kW"
                         " per home)")
    for f in record.faults:
        hh, mm = int(f.sim_time[11:13]), int(f.sim_time[14:16])
        ax.axvline(hh + mm / 60, color="tab:red", linestyle=":", linewidth=1)
        ax.annotate(f.kind, (hh + mm / 60, 0.97), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color="tab:red")
    ax.set_xlabel("hour of the day (red: faults injected)" if record.faults else "hour of the day")
    ax.set_ylabel("kW (community)")
    ax.set_xlim(0, max(1.0, len(x) / 4))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8)
    ax.set_title("Community load before and after demand management")
    fig.tight_layout()
    return fig


def balances_figure(record: DayRecord) -> Figure:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    labels = [label for label, _ in record.balances]
    homes = sorted({h for _, b in record.balances for h in b})
    for home in homes:
        ys = [b.get(home, 0) / 1_000_000 for _, b in record.balances]
        ax.plot(range(len(labels)), ys, marker=".", label=home)
    step = max(1, len(labels) // 12)
    ax.set_xticks(range(0, len(labels), step), [labels[i] for i in range(0, len(labels), step)],
                  fontsize=7, rotation=30)
    ax.set_ylabel("tokens (€)")
    ax.set_title("Token balances over the day")
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def costs_figure(costs: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = ["grid_only", *RULES]
    values = [costs[n]["community_cost_utok"] / 1_000_000 for n in names]
    colors = ["tab:gray", "tab:blue", "tab:green", "tab:orange"]
    ax.bar(names, values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f} €", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("community cost of the day (€)")
    ax.set_title("Grid tariffs alone against the community market, per clearing rule")
    fig.tight_layout()
    return fig


def _table(rows: list[list[str]], head: list[str]) -> str:
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _forecast_html(data: dict[str, Any]) -> str:
    parts = []
    fc = data.get("forecast") or {}
    if fc:
        err = fc["error"]
        rows = [[name, f"{e['mae_wh']:.1f}", f"{e['nmae'] * 100:.1f} %", str(e["slots"])]
                for name, e in sorted(err.items())]
        parts.append(f"<p>Each home planned from its EMS forecast ({fc['model']}, learnt from "
                     f"{fc['history_days']} days of history), not from the day that happened; "
                     "the trading agent sized its offers and bids from the same forecast. "
                     "Forecast error of the day, per home and 15-minute slot:</p>")
        parts.append(_table(rows, ["series", "MAE Wh", "nMAE", "slots"]))
    dev = data.get("settlement_deviations") or {}
    if dev:
        parts.append(
            f"<p>Trading on forecasts: {dev['sellers_short']} times a seller exported less than "
            f"it sold (shortfall {dev['seller_shortfall_wh'] / 1000:.2f} kWh, bought at retail) "
            f"and {dev['buyers_in_excess']} times a buyer imported less than it bought (excess "
            f"{dev['buyer_excess_wh'] / 1000:.2f} kWh, returned at feed-in).</p>")
    dr = data.get("demand_response") or {}
    if dr:
        metered = dr.get("peak_in_window_metered_net_w")
        parts.append(
            f"<p>Demand response: the grid operator asked every home to import at most "
            f"{dr['request_max_w_per_home'] / 1000:.1f} kW from {dr['window']} (shaded). "
            f"Community peak in the window: {dr['peak_in_window_before_ems_w'] / 1000:.2f} kW "
            f"without the EMS, {dr['peak_in_window_after_ems_w'] / 1000:.2f} kW with it"
            + (f", {metered / 1000:.2f} kW net as metered" if metered is not None else "")
            + ".</p>")
    return "\n".join(parts)


def render_html(record: DayRecord, data: dict[str, Any]) -> str:
    costs = data["cost_comparison"]
    imgs = {
        "curves": _png(curves_figure(record.hours)),
        "load": _png(load_figure(record)),
        "balances": _png(balances_figure(record)),
        "costs": _png(costs_figure(costs)),
    }
    verdict = "all self-checks passed" if record.ok else "SOME SELF-CHECKS FAILED"
    checks = _table([[c.name, "ok" if c.ok else "FAILED", c.detail] for c in record.checks],
                    ["check", "result", "detail"])
    faults = _table(
        [[f.sim_time, f.kind, f.detail, f.recovered] for f in record.faults],
        ["when (simulated)", "fault", "what", "recovery"],
    ) if record.faults else "<p>No faults were injected (run with <code>--faults</code>).</p>"
    hours = _table(
        [[h["listing_id"], str(h["offers"]), str(h["bids"]),
          "-" if h["mcp_utok_per_kwh"] is None else f"{h['mcp_utok_per_kwh'] / 1e6:.4f}",
          f"{h['traded_wh'] / 1000:.2f}", f"{h['grid_import_wh'] / 1000:.2f}",
          f"{h['grid_export_wh'] / 1000:.2f}", h["note"]] for h in data["hours"]],
        ["listing", "offers", "bids", "MCP €/kWh", "traded kWh", "grid import kWh (billed)",
         "grid export kWh (billed)", "note"],
    )
    def _share(name: str) -> str:
        value = costs[name].get("efficiency")
        return "" if value is None else f"{100 * value:.1f} %"

    windows = [(h["listing_id"], w) for h in data["hours"] for w in h["balance"]]
    flagged = [w for _, w in windows if w["status"] != "balanced"]
    balance = _table(
        [[w["interval"], str(w["quarters"]), w["status"], str(w["members_import_wh"]),
          str(w["members_export_wh"]), str(w.get("feeder_import_wh", "")),
          str(w.get("feeder_export_wh", "")), str(w.get("loss_wh", "")),
          str(w.get("allowed_wh", "")), str(w["export_cut_wh"])] for w in flagged],
        ["window", "quarters", "status", "homes' import Wh", "homes' export Wh",
         "feeder import Wh", "feeder export Wh", "loss Wh", "allowed Wh", "export cut Wh"],
    ) if flagged else "<p>Every window balanced.</p>"
    cost_rows = [[name, f"{costs[name]['community_cost_utok'] / 1e6:.2f}",
                  "" if name == "grid_only" else f"{costs[name]['saving_utok'] / 1e6:.2f}",
                  "" if name == "grid_only" else f"{costs[name]['traded_wh'] / 1000:.2f}",
                  _share(name)]
                 for name in ["grid_only", *RULES]]
    parts = _table([[k, v] for k, v in sorted(record.parts.items())], ["part", "ran as"])
    tar = data["tariffs_utok_per_kwh"]
    subs = _table(
        [[home, name, f"{wh / 1000:.2f}",
          f"{record.sub_planned_wh.get(home, {}).get(name, 0) / 1000:.2f}"]
         for home, loads in sorted(record.sub_metered_wh.items())
         for name, wh in sorted(loads.items())],
        ["home", "appliance", "metered kWh (plug or node)", "planned kWh"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>wattmesh community day {html.escape(record.date)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
img{{max-width:100%}} .ok{{color:#070}} .bad{{color:#b00}}</style></head><body>
<h1>wattmesh: a community day, {html.escape(record.date)}</h1>
<p>{len(record.households)} homes, {len(record.hours)} hourly auctions, clearing rule
<b>{html.escape(record.rule)}</b>. <b class="{'ok' if record.ok else 'bad'}">{verdict}</b>.</p>
<h2>Hourly auctions</h2>
<p>Each hour: AuthorizeOfferCom, the homes' RESOffers and BuyOffers (from each EMS plan's
surplus or deficit), then Bid_Closed clears the book. With the paper's rule the market clearing
price is the mean bid; sellers at or below it are served first in, first out, and the highest
bids win.</p>
<img alt="supply and demand curves" src="data:image/png;base64,{imgs['curves']}">
{hours}
<h2>Community load before and after the EMS</h2>
<img alt="community load" src="data:image/png;base64,{imgs['load']}">
{_forecast_html(data)}
<h2>Token balances</h2>
<img alt="token balances" src="data:image/png;base64,{imgs['balances']}">
<h2>Cost of the day</h2>
<p>The same metered day, priced twice: bought and sold entirely at grid tariffs (retail
{tar['retail_peak'] / 1e6:.3f} €/kWh from {tar['peak_hours'][0]}:00 to {tar['peak_hours'][1]}:00,
{tar['retail_offpeak'] / 1e6:.3f} €/kWh otherwise, feed-in {tar['feed_in'] / 1e6:.3f} €/kWh),
and with the community market, each
hour's recorded order book cleared again by each rule with the contract's own clearing functions;
what the market did not match goes to the grid, a seller's shortfall is bought at retail.</p>
<img alt="cost comparison" src="data:image/png;base64,{imgs['costs']}">
{_table(cost_rows, ["rule", "community cost €", "saving against grid €", "traded kWh",
                     "efficiency (gains traded ÷ possible)"])}
<h2>Community balance against the feeder meter</h2>
<p>The operator's gateway reads the community's feeder meter; at settlement the contract checks
{len(windows)} windows of the homes' reports against it (losses and meter error within the
genesis tolerance). A window that does not balance is flagged, and exports the feeder never
saw are cut, the largest claims first, before anything is paid.</p>{balance}
<h2>Appliances on plugs and on the firmware node</h2>
<p>Each flexible appliance is switched by its relay at the EMS plan's slot edges; one regular
appliance per home is only metered. The node's CT clamps measure like the real ones do.</p>{subs}
<h2>Faults</h2>{faults}
<h2>Self-checks</h2>{checks}
<h2>How each part ran</h2>{parts}
</body></html>
"""


def write_report(out: Path, record: DayRecord, tariffs: Tariffs) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    data = summary(record, tariffs)
    (out / "summary.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n",
                                      encoding="utf-8")
    (out / "report.html").write_text(render_html(record, data), encoding="utf-8")
    return data
