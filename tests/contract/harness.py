"""A small community driven through the real contract: keys, signed transactions, invariants."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st

from ledger.contract import default_genesis, make_contract, sign_report
from ledger.contract.api import BlockContext, Contract, Receipt
from ledger.contract.clearing import Order
from ledger.contract.market import AUTHORIZE_OFFERS
from ledger.contract.metering import INTERVAL_MS, interval_start_ms
from ledger.tx import public_bytes, sign_tx

HOUR = "2026-11-24T13"  # a peak hour
OFFPEAK = "2026-11-24T03"
AFTER = 1_900_000_000_000  # a block timestamp (ms) after every hour used in the tests


def commitment(id_grid: str) -> str:
    """A stand-in commitment to a member's personal data (64 hex, as ``ledger.personal`` makes)."""
    return hashlib.sha256(id_grid.encode()).hexdigest()


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def hexkey(k: Ed25519PrivateKey) -> str:
    return public_bytes(k.public_key()).hex()


OPERATOR = key(1)
TREASURY = 10**17  # micro-tokens the genesis allocates to the operator: the whole supply
# the members of the two-seller, two-buyer communities: (id_grid, role, key number)
TWO_SELLERS_TWO_BUYERS = (
    ("P1", "producer", 10), ("P2", "prosumer", 11), ("C1", "consumer", 12), ("C2", "consumer", 13)
)
LIMIT_W = 17_250  # a 3 x 25 A connection: 4312 Wh per 15 minutes


def report_time(body: Any) -> int:
    """The block timestamp a report is delivered in by default: a minute after its interval
    ends (0 when the body names no valid interval, so that malformed bodies still fail as such)."""
    try:
        return interval_start_ms(body["interval"]) + INTERVAL_MS + 60_000
    except (KeyError, TypeError, ValueError, IndexError):
        return 0


class Community:
    """Members by id_grid with their keys; ``tx`` signs and applies one transaction, one per
    block. An open-book community unless ``sealed_bids=True`` is given: the auction's rules are
    tested on open books, sealed listings in test_sealed.py."""

    def __init__(self, **params: Any) -> None:
        params.setdefault("sealed_bids", False)
        genesis = default_genesis(hexkey(OPERATOR), treasury=TREASURY, **params)
        self.contract: Contract = make_contract(genesis)
        self.keys: dict[str, Ed25519PrivateKey] = {"OPERATOR": OPERATOR}
        self.gateways: dict[str, Ed25519PrivateKey] = {}
        self.height = 0
        self.nonce = 0
        self.log: list[tuple[Any, BlockContext]] = []
        self.receipts: list[Receipt] = []

    def tx(
        self, who: str | Ed25519PrivateKey, kind: str, body: dict[str, Any], ts: int | None = None
    ) -> Receipt:
        signer = self.keys[who] if isinstance(who, str) else who
        if ts is None:
            ts = report_time(body) if kind == "meter.report" else 0
        self.height += 1
        self.nonce += 1
        ctx = BlockContext(height=self.height, index=0, timestamp_ms=ts)
        tx = sign_tx(signer, kind, body, self.nonce).to_contract()
        self.log.append((tx, ctx))
        receipt = self.contract.apply(tx, ctx)
        self.receipts.append(receipt)
        return receipt

    def ok(
        self, who: str | Ed25519PrivateKey, kind: str, body: dict[str, Any], ts: int | None = None
    ) -> dict[str, Any]:
        receipt = self.tx(who, kind, body, ts)
        assert receipt.code == "OK", (kind, body, receipt)
        return dict(receipt.result)

    def admit(self, id_grid: str, role: str, n: int) -> None:
        self.keys[id_grid] = key(n)
        self.ok(
            "OPERATOR",
            "registry.admit",
            {
                "id_grid": id_grid,
                "commitment": commitment(id_grid),
                "public_key": hexkey(key(n)),
                "role": role,
            },
        )

    def members(self, *rows: tuple[str, str, int]) -> None:
        """``admit`` each (id_grid, role, key number) in turn."""
        for id_grid, role, n in rows:
            self.admit(id_grid, role, n)

    def res(self, res_id: str, owner: str, rated_power_w: int) -> None:
        self.ok(
            "OPERATOR",
            "registry.add_res",
            {"res_id": res_id, "owner": owner, "kind": "PV", "rated_power_w": rated_power_w},
        )

    def meter(
        self,
        meter_id: str,
        owner: str,
        gateway: int,
        import_limit_w: int = LIMIT_W,
        export_limit_w: int = LIMIT_W,
        role: str = "member",
    ) -> None:
        self.gateways[meter_id] = key(gateway)
        body = {
            "meter_id": meter_id,
            "owner": owner,
            "gateway_key": hexkey(key(gateway)),
            "import_limit_w": import_limit_w,
            "export_limit_w": export_limit_w,
        }
        if role != "member":
            body["role"] = role
        self.ok("OPERATOR", "registry.add_meter", body)
        self.ok(owner, "meter.confirm", {"meter_id": meter_id})  # the owner's consent

    def offer(self, who: str, listing_id: str, res_id: str, wh: int, reserve_price: int) -> None:
        body = {"listing_id": listing_id, "res_id": res_id, "wh": wh}
        self.ok(who, "auction.offer", {**body, "reserve_price": reserve_price})

    def bid(self, who: str, listing_id: str, wh: int, bid_price: int) -> None:
        self.ok(who, "auction.bid", {"listing_id": listing_id, "wh": wh, "bid_price": bid_price})

    def mint(self, to: str, amount: int) -> None:
        """Tokens for a member: bought from the operator's treasury (the genesis supply)."""
        self.ok("OPERATOR", "token.transfer", {"to": to, "amount": amount})

    def report(
        self, meter_id: str, interval: str, import_wh: int, export_wh: int, ts: int | None = None
    ) -> Receipt:
        gw = self.gateways[meter_id]
        return self.tx(
            gw, "meter.report", sign_report(gw, meter_id, interval, import_wh, export_wh), ts
        )

    def balance(self, id_grid: str) -> int:
        return int(self.contract.query("balance", {"id_grid": id_grid})["balance"])

    def q(self, path: str, **params: Any) -> Any:
        return self.contract.query(path, params)


def check_invariants(contract: Contract) -> None:
    """Tokens conserved (community plus grid), no negative balance, no Wh sold twice, every
    settled hour's energy tokens spent exactly once."""
    members = contract.query("members", {})
    grid = contract.query("grid", {})
    balances = [m["balance"] for m in members]
    assert all(b >= 0 for b in balances)
    escrow = grid["held"]
    for h in contract.query("mcp_history", {}):
        assert h["mcp"] is None or h["mcp"] > 0
    listings = _listings(contract)
    for listing_id in listings:
        info = contract.query("listing", {"listing_id": listing_id})
        book = contract.query("order_book", {"listing_id": listing_id})
        if info["state"] == AUTHORIZE_OFFERS and not info["sealed"]:
            assert sum(b["escrow"] for b in book["bids"]) <= grid["held"]
        sold_per_offer: dict[int, int] = {}
        bought_per_bid: dict[int, int] = {}
        for t in contract.query("trades", {"listing_id": listing_id}):
            assert t["wh"] > 0 and t["amount"] == t["wh"] * t["price"] // 1000
            assert t["proceeds"] == t["wh"] * t["seller_price"] // 1000 <= t["amount"]
            sold_per_offer[t["offer_seq"]] = sold_per_offer.get(t["offer_seq"], 0) + t["wh"]
            bought_per_bid[t["bid_seq"]] = bought_per_bid.get(t["bid_seq"], 0) + t["wh"]
        offered = {o["seq"]: o["wh"] for o in book["offers"]}
        wanted = {b["seq"]: b["wh"] for b in book["bids"]}
        assert all(wh <= offered[s] for s, wh in sold_per_offer.items())  # no Wh sold twice
        assert all(wh <= wanted[s] for s, wh in bought_per_bid.items())
        settlement = contract.query("settlement", {"listing_id": listing_id})
        if settlement is not None:
            for line in settlement["lines"]:
                # energy tokens of the hour: spent once, against sales or to the grid
                assert line["delivered_wh"] + line["feed_in_wh"] == line["exported_wh"]
                assert line["exported_wh"] + line["export_cut_wh"] == line["reported_export_wh"]
                assert line["delivered_wh"] + line["shortfall_wh"] == line["sold_wh"]
                assert line["taken_wh"] + line["excess_wh"] == line["bought_wh"]
        for tokens in contract.query("energy", {"listing_id": listing_id}):
            spent = tokens["spent_on_trades_wh"] + tokens["spent_to_grid_wh"] + tokens["voided_wh"]
            assert tokens["unspent_wh"] >= 0 and spent <= tokens["minted_wh"]
            # settled: every token spent exactly once; before settlement none is spent
            assert tokens["unspent_wh"] == (0 if settlement is not None else tokens["minted_wh"])
    assert sum(balances) + escrow + grid["balance"] == grid["supply"]


def _listings(contract: Contract) -> list[str]:
    return [item["listing_id"] for item in contract.query("listings", {})]


__all__ = [
    "AFTER",
    "HOUR",
    "LIMIT_W",
    "OFFPEAK",
    "OPERATOR",
    "TREASURY",
    "Community",
    "check_invariants",
    "commitment",
    "key",
    "rejected",
    "sign_report",
]


def rejected(
    c: Community,
    who: str | Ed25519PrivateKey,
    kind: str,
    body: dict[str, Any],
    code: str,
    ts: int | None = None,
) -> str:
    """Apply a transaction that must fail with ``code`` and leave the state byte-identical."""
    before = c.contract.snapshot()
    receipt = c.tx(who, kind, body, ts)
    assert receipt.code == code, receipt
    assert receipt.message and receipt.result == {}
    assert c.contract.snapshot() == before
    return receipt.message


def order_books(
    side: st.SearchStrategy[list[tuple[int, int]]], bidders: int = 0
) -> st.SearchStrategy[tuple[list[Order], list[Order]]]:
    """Random books for the clearing: offers and bids of (wh, price) drawn from ``side``,
    arrival interleaved at random (seq numbers a permutation over both sides). Orders are
    spread over ``bidders`` sellers and as many buyers, or each is its own bidder (0)."""

    def who(i: int) -> int:
        return i % bidders if bidders else i

    @st.composite
    def books(draw: st.DrawFn) -> tuple[list[Order], list[Order]]:
        raw_offers, raw_bids = draw(side), draw(side)
        seqs = draw(st.permutations(range(1, len(raw_offers) + len(raw_bids) + 1)))
        offers = [
            Order(seqs[i], f"S{who(i)}", wh, p, f"PV{i}") for i, (wh, p) in enumerate(raw_offers)
        ]
        k = len(raw_offers)
        bids = [Order(seqs[k + i], f"B{who(i)}", wh, p) for i, (wh, p) in enumerate(raw_bids)]
        return offers, bids

    return books()


# A book checked by hand (prices in micro-tokens/kWh, energy in Wh); seq = order of arrival:
# the clearing tests and McAfee's rule's tests work it out by hand.
OFFERS = [
    Order(1, "S1", 3000, 50_000, "PV1"),
    Order(2, "S2", 2000, 70_000, "PV2"),
    Order(3, "S3", 4000, 40_000, "PV3"),
]
BIDS = [
    Order(4, "B1", 2500, 60_000),
    Order(5, "B2", 3000, 90_000),
    Order(6, "B3", 1000, 45_000),
    Order(7, "B4", 2000, 90_000),
]
