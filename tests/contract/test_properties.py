"""Random event orders through the whole contract: conservation, no negative balance, no Wh sold
twice, energy tokens spent once, rejected transactions change nothing, and two independent
executions (also one resumed from a snapshot) reach the same state digest."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger.contract import sign_report
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.sealed import order_commitment
from tests.contract.harness import AFTER, TWO_SELLERS_TWO_BUYERS, Community, check_invariants

LISTINGS = ("2026-11-24T13", "2026-11-24T03")
SELLERS = ("P1", "P2")  # P2 is a prosumer
BUYERS = ("C1", "C2", "P2")
MEMBERS = ("P1", "P2", "C1", "C2", "OPERATOR")
METERS = ("MP1", "MP2", "MC1", "MC2")
RULES = ("paper", "uniform", "pay_as_bid", "mcafee")
# an open book with one order per member (the default policy) or many (the paper's); sealed
# orders; sealed orders in a community with a feeder meter, whose reports are random here
MODES = ("open", "open-many", "sealed", "sealed-feeder")

_listing = st.sampled_from(LISTINGS)
_price = st.integers(35_000, 100_000)  # a little outside the band on both sides
_wh = st.integers(0, 3000)

_offer = st.tuples(st.just("offer"), st.sampled_from(SELLERS), _listing, _wh, _price)
_bid = st.tuples(st.just("bid"), st.sampled_from(BUYERS), _listing, _wh, _price)
_report = st.tuples(
    st.just("report"),
    st.sampled_from(METERS),
    _listing,
    st.sampled_from(("00", "15", "30", "45")),
    st.integers(0, 2000),
    st.integers(0, 2000),
)
_transfer = st.tuples(
    st.just("transfer"),
    st.sampled_from(MEMBERS),
    st.sampled_from(MEMBERS),
    st.integers(-5, 400_000),
)
# orders and reports weigh more than the steps that end a listing, so books fill up first
actions = st.one_of(
    _offer,
    _offer,
    _offer,
    _offer,
    _bid,
    _bid,
    _bid,
    _bid,
    _report,
    _report,
    _report,
    _transfer,
    st.tuples(st.just("mint"), st.sampled_from(MEMBERS), st.integers(1, 300_000)),
    st.tuples(st.just("open"), _listing),
    st.tuples(st.just("close"), _listing),
    st.tuples(st.just("reveal"), _listing),
    st.tuples(st.just("clear"), _listing),
    st.tuples(st.just("settle"), _listing),
)


# most scripts start with both listings open, so that offers and bids are mostly accepted
OPENING = [("open", listing) for listing in LISTINGS]


def _community(rule: str, mode: str = "open") -> Community:
    c = Community(
        clearing_rule=rule,
        sealed_bids=mode.startswith("sealed"),
        order_policy="many" if mode == "open-many" else "one",
    )
    c.members(*TWO_SELLERS_TWO_BUYERS)
    c.res("PV1", "P1", 4000)
    c.res("PV2", "P2", 2500)
    for n, meter in enumerate(METERS):
        owner = {"MP1": "P1", "MP2": "P2", "MC1": "C1", "MC2": "C2"}[meter]
        c.meter(meter, owner, 50 + n)
    for who in ("C1", "C2", "P2"):
        c.mint(who, 500_000)
    if mode == "sealed-feeder":
        c.meter("FEEDER", "OPERATOR", 60, role="feeder")
    return c


def _sealed(c: Community) -> bool:
    return bool(c.q("params")["sealed_bids"])


PENDING: dict[int, list[tuple[str, dict[str, Any]]]] = {}  # id(community) -> reveals to send


def _commit(c: Community, who: str, listing: str, side: str, wh: int, price: int,
            res_id: str) -> None:  # fmt: skip
    salt = hashlib.sha256(f"{len(c.log)}".encode()).digest()
    commitment = order_commitment(listing, who, side, wh, price, res_id, salt)
    body = {"listing_id": listing, "side": side, "commitment": commitment}
    if c.tx(who, "auction.commit", body).ok:
        PENDING.setdefault(id(c), []).append((who, {
            "listing_id": listing, "side": side, "wh": wh, "price": price, "res_id": res_id,
            "salt": salt.hex()}))  # fmt: skip


def _run(c: Community, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "offer":
        _, who, listing, wh, price = action
        res_id = "PV1" if who == "P1" else "PV2"
        if _sealed(c):
            _commit(c, who, listing, "offer", wh, price, res_id)
            return
        body = {"listing_id": listing, "res_id": res_id, "wh": wh, "reserve_price": price}
        c.tx(who, "auction.offer", body)
    elif kind == "bid":
        _, who, listing, wh, price = action
        if _sealed(c):
            _commit(c, who, listing, "bid", wh, price, "")
            return
        c.tx(who, "auction.bid", {"listing_id": listing, "wh": wh, "bid_price": price})
    elif kind == "reveal":  # every commitment of the listing so far, replaced ones included
        for who, body in PENDING.get(id(c), []):
            if body["listing_id"] == action[1]:
                event(f"reveal {c.tx(who, 'auction.reveal', body).code}")
    elif kind == "clear":  # after the reveal window, unrevealed or not
        code = c.tx("OPERATOR", "auction.clear", {"listing_id": action[1]}, ts=AFTER).code
        event(f"clear {code}")
    elif kind == "transfer":
        _, who, to, amount = action
        c.tx(who, "token.transfer", {"to": to, "amount": amount})
    elif kind == "mint":
        c.tx("OPERATOR", "token.transfer", {"to": action[1], "amount": action[2]})
    elif kind in ("open", "close"):
        receipt = c.tx("OPERATOR", f"auction.{kind}", {"listing_id": action[1]})
        if kind == "close" and receipt.ok and _sealed(c):
            # most members reveal at once; every third keeps its order back (a later "reveal"
            # may still send it, or "clear" forfeits it)
            mine = [(w, b) for w, b in PENDING.get(id(c), []) if b["listing_id"] == action[1]]
            for n, (who, body) in enumerate(mine):
                if n % 3 != 2:
                    event(f"reveal {c.tx(who, 'auction.reveal', body).code}")
    elif kind == "settle":
        receipt = c.tx("OPERATOR", "auction.settle", {"listing_id": action[1]}, ts=AFTER)
        if receipt.ok and any(w["export_cut_wh"] for w in receipt.result["balance"]):
            event("settle with a feeder cut")
    else:
        _, meter, listing, quarter, imp, exp = action
        if meter == "MC2" and "FEEDER" in c.gateways:
            meter = "FEEDER"  # in a community with a feeder, its reports are random as well
        gw = c.gateways[meter]
        c.tx(gw, "meter.report", sign_report(gw, meter, f"{listing}:{quarter}", imp, exp))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(RULES), st.sampled_from(MODES), st.lists(actions, min_size=5,
       max_size=50), st.data())  # fmt: skip
def test_random_event_orders_keep_every_invariant(
    rule: str, mode: str, script: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    c = _community(rule, mode)
    start = len(c.log)
    for action in [*OPENING, *script]:
        _run(c, action)
        check_invariants(c.contract)

    # an independent execution of the same blocks reaches the same digest ...
    again = _community(rule, mode)
    replay = c.log[start:]
    for tx, ctx in replay:
        again.contract.apply(tx, ctx)
    assert again.contract.state_digest() == c.contract.state_digest()
    # ... and so does one that resumes from a snapshot taken anywhere along the way
    cut = data.draw(st.integers(0, len(replay)))
    third = _community(rule, mode)
    for tx, ctx in replay[:cut]:
        third.contract.apply(tx, ctx)
    resumed = _community(rule, mode)
    resumed.contract.restore(third.contract.snapshot())
    for tx, ctx in replay[cut:]:
        resumed.contract.apply(tx, ctx)
    assert resumed.contract.snapshot() == c.contract.snapshot()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RULES), st.sampled_from(MODES), st.lists(actions, min_size=1, max_size=30))
def test_rejected_transactions_change_nothing(
    rule: str, mode: str, script: list[tuple[Any, ...]]
) -> None:
    c = _community(rule, mode)
    apply = c.tx

    def checked(*args: Any, **kwargs: Any) -> Any:  # every transaction an action sends
        before = c.contract.snapshot()
        receipt = apply(*args, **kwargs)
        assert receipt.code != "INTERNAL_ERROR", receipt
        if not receipt.ok:
            assert receipt.message
            assert c.contract.snapshot() == before
        return receipt

    c.tx = checked  # type: ignore[method-assign]
    for action in [*OPENING, *script]:
        _run(c, action)


def test_transactions_do_not_depend_on_body_key_order() -> None:
    a, b = _community("paper"), _community("paper")
    a.ok("OPERATOR", "auction.open", {"listing_id": LISTINGS[0]})
    b.ok("OPERATOR", "auction.open", {"listing_id": LISTINGS[0]})
    body = {"listing_id": LISTINGS[0], "wh": 100, "bid_price": 50_000}
    reversed_body = dict(reversed(list(body.items())))
    sender = a.keys["C1"].public_key().public_bytes_raw()
    ctx = BlockContext(99, 0, 0)
    a.contract.apply(Transaction("t", sender, "auction.bid", body, 1), ctx)
    b.contract.apply(Transaction("t", sender, "auction.bid", reversed_body, 1), ctx)
    assert a.contract.state_digest() == b.contract.state_digest()


_orders = st.lists(
    st.tuples(st.sampled_from(SELLERS), st.integers(1, 1500), st.integers(39_000, 95_000)),
    max_size=6,
)
_bids = st.lists(
    st.tuples(st.sampled_from(BUYERS), st.integers(1, 1500), st.integers(39_000, 95_000)),
    max_size=6,
)
_metered = st.lists(
    st.tuples(
        st.sampled_from(METERS),
        st.sampled_from(("00", "15", "30", "45")),
        st.integers(0, 1500),
        st.integers(0, 1500),
    ),
    max_size=10,
)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(RULES), st.sampled_from(LISTINGS), _orders, _bids, _metered)
def test_every_hour_settles_with_tokens_and_energy_conserved(
    rule: str,
    listing: str,
    offers: list[tuple[str, int, int]],
    bids: list[tuple[str, int, int]],
    metered: list[tuple[str, str, int, int]],
) -> None:
    c = _community(rule)
    c.ok("OPERATOR", "auction.open", {"listing_id": listing})
    for who, wh, price in offers:
        res_id = "PV1" if who == "P1" else "PV2"
        c.tx(
            who,
            "auction.offer",
            {"listing_id": listing, "res_id": res_id, "wh": wh, "reserve_price": price},
        )
    for who, wh, price in bids:
        c.tx(who, "auction.bid", {"listing_id": listing, "wh": wh, "bid_price": price})
    closed = c.ok("OPERATOR", "auction.close", {"listing_id": listing})
    accepted = [b["price"] for b in c.q("order_book", listing_id=listing)["bids"]]
    if accepted and rule == "paper":
        assert min(accepted) <= closed["mcp"] <= max(accepted)
    for meter, quarter, imp, exp in metered:
        gw = c.gateways[meter]
        c.tx(gw, "meter.report", sign_report(gw, meter, f"{listing}:{quarter}", imp, exp))
    settled = c.ok("OPERATOR", "auction.settle", {"listing_id": listing}, ts=AFTER)
    retail, feed_in = settled["retail_price"], settled["feed_in_price"]
    for line in settled["lines"]:
        assert line["charge"] == (line["shortfall_wh"] + line["grid_import_wh"]) * retail // 1000
        assert line["refund"] == (line["feed_in_wh"] + line["excess_wh"]) * feed_in // 1000
        owed = line["charge"] - line["refund"]
        assert line["net_to_grid"] + line["debt"] == owed and line["debt"] >= 0
        assert line["debt"] == 0 or line["net_to_grid"] >= 0
    first: dict[tuple[str, str], int] = {}
    for meter, quarter, _, exp in metered:
        first.setdefault((meter, quarter), exp)  # a duplicate report is refused: first one wins
    assert sum(line["exported_wh"] for line in settled["lines"]) == sum(first.values())
    check_invariants(c.contract)
