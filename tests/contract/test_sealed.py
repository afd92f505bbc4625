"""Sealed bids (issue 18): commit while open, reveal after the close, clear on revealed orders,
and an order of service that the primary cannot choose.

The attack of the issue: sellers are served first in, first out, and "first" is the order the
primary puts in its blocks, so an ask at 80,000 that the primary orders first beats a later ask
at 39,000. A Byzantine primary here may reorder the transactions it receives in any way and
delay any of them to a later block within the phase (that is within its powers: a longer delay
makes the other replicas change view); the tests apply every such schedule they draw to a fresh
contract and compare the clearings.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.contract.sealed import order_commitment
from tests.contract.harness import HOUR, Community, check_invariants, hexkey, key, rejected

DEPOSIT = 100_000
CLOSE_MS = 1_790_000_000_000
WINDOW_MS = 10 * 60_000


def _community(**params: Any) -> Community:
    c = Community(sealed_bids=True, **params)
    for n, who in enumerate(("S1", "S2", "S3"), start=10):
        c.admit(who, "producer", n)
        c.res(f"PV{who}", who, 5000)
        c.mint(who, 1_000_000)
    for n, who in enumerate(("B1", "B2", "B3"), start=20):
        c.admit(who, "consumer", n)
        c.mint(who, 10_000_000)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    return c


class Sealed:
    """A member's sealed order: the commit body now, the reveal body later."""

    def __init__(self, who: str, side: str, wh: int, price: int, salt: bytes | None = None):
        self.who, self.side, self.wh, self.price = who, side, wh, price
        self.res_id = f"PV{who}" if side == "offer" else ""
        self.salt = salt if salt is not None else os.urandom(32)
        self.commitment = order_commitment(HOUR, who, side, wh, price, self.res_id, self.salt)

    def commit(self) -> dict[str, Any]:
        return {"listing_id": HOUR, "side": self.side, "commitment": self.commitment}

    def reveal(self) -> dict[str, Any]:
        return {"listing_id": HOUR, "side": self.side, "wh": self.wh, "price": self.price,
                "res_id": self.res_id, "salt": self.salt.hex()}  # fmt: skip


def _run(orders: list[Sealed], commit_order: list[int], reveal_order: list[int],
         **params: Any) -> dict[str, Any]:  # fmt: skip
    c = _community(**params)
    for i in commit_order:
        c.ok(orders[i].who, "auction.commit", orders[i].commit())
    assert c.ok("OPERATOR", "auction.close", {"listing_id": HOUR}, ts=CLOSE_MS)["state"] == "REVEAL"
    for i in reveal_order:
        c.ok(orders[i].who, "auction.reveal", orders[i].reveal(), ts=CLOSE_MS + 1)
    result = c.ok("OPERATOR", "auction.clear", {"listing_id": HOUR}, ts=CLOSE_MS + 2)
    check_invariants(c.contract)
    return result


# the book: two asks, one bid that only one of them can fill
BOOK = [Sealed("S1", "offer", 1000, 80_000), Sealed("S2", "offer", 1000, 39_000),
        Sealed("B1", "bid", 1000, 90_000)]  # fmt: skip


def _served(result: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    return [(t["buyer"], t["seller"], t["wh"], t["price"]) for t in result["trades"]]


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(3)), st.permutations(range(3)))
def test_the_primary_cannot_choose_who_is_served(commits: list[int], reveals: list[int]) -> None:
    reference = _run(BOOK, [0, 1, 2], [0, 1, 2])
    result = _run(BOOK, commits, reveals)
    assert _served(result) == _served(reference)
    assert result["mcp"] == reference["mcp"]


def test_the_order_of_service_is_the_key_not_the_block_order() -> None:
    """Which seller the paper's FIFO serves follows from the keys, which follow from all the
    salts: two books with different salts can serve different sellers, whatever the primary
    does, and the same salts always serve the same one."""
    served = set()
    for n in range(12):
        book = [Sealed(o.who, o.side, o.wh, o.price, bytes([n, i]) * 16)
                for i, o in enumerate(BOOK)]  # fmt: skip
        first = _served(_run(book, [0, 1, 2], [2, 1, 0]))
        assert first == _served(_run(book, [2, 0, 1], [0, 2, 1]))
        served.add(first[0][1])
    assert served == {"S1", "S2"}  # the key decides, not the primary (nor the price)


def test_clearing_uses_only_revealed_orders_and_unrevealed_forfeit() -> None:
    c = _community()
    orders = [Sealed("S1", "offer", 2000, 40_000), Sealed("B1", "bid", 1000, 90_000),
              Sealed("B2", "bid", 1000, 80_000)]  # fmt: skip
    for o in orders:
        assert c.ok(o.who, "auction.commit", o.commit())["deposit"] == DEPOSIT
    assert c.balance("B2") == 10_000_000 - DEPOSIT
    # nothing of the order is on the ledger before the close: only the hash
    assert c.q("order_book", listing_id=HOUR) == {"listing_id": HOUR, "offers": [], "bids": []}
    rejected(c, "B1", "auction.reveal", orders[1].reveal(), "NOT_REVEALING")
    rejected(c, "OPERATOR", "auction.clear", {"listing_id": HOUR}, "NOT_REVEALING")
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR}, ts=CLOSE_MS)
    rejected(c, "B1", "auction.commit", Sealed("B1", "bid", 5, 90_000).commit(), "LISTING_CLOSED")
    c.ok("S1", "auction.reveal", orders[0].reveal(), ts=CLOSE_MS)
    assert c.ok("B1", "auction.reveal", orders[1].reveal(), ts=CLOSE_MS)["escrow"] == 90_000
    rejected(c, "B1", "auction.reveal", orders[1].reveal(), "ALREADY_REVEALED")
    # a reveal is bound to its sender, and to every field of the order
    rejected(c, "B3", "auction.reveal", orders[2].reveal(), "UNKNOWN_COMMITMENT")
    rejected(c, "B2", "auction.reveal", orders[2].reveal() | {"price": 79_000},
             "UNKNOWN_COMMITMENT")  # fmt: skip
    check_invariants(c.contract)
    # B2 never reveals: the operator must wait for the window before clearing without it
    rejected(c, "OPERATOR", "auction.clear", {"listing_id": HOUR}, "REVEAL_OPEN",
             ts=CLOSE_MS + WINDOW_MS - 1)  # fmt: skip
    grid_before = c.q("grid")["balance"]
    result = c.ok("OPERATOR", "auction.clear", {"listing_id": HOUR}, ts=CLOSE_MS + WINDOW_MS)
    assert (result["unrevealed"], result["forfeited"]) == (1, DEPOSIT)
    assert {t["buyer"] for t in result["trades"]} == {"B1"}
    assert result["mcp"] == 90_000  # the paper's mean over revealed bids only
    assert c.balance("B2") == 10_000_000 - DEPOSIT  # forfeited
    assert c.q("grid")["balance"] == grid_before + DEPOSIT
    assert c.balance("B1") == 10_000_000 - 90_000  # deposit back, paid 90,000 for 1 kWh
    check_invariants(c.contract)


def test_commit_rules() -> None:
    c = _community()
    good = Sealed("B1", "bid", 1000, 90_000)
    rejected(c, "S1", "auction.commit", Sealed("S1", "bid", 1, 50_000).commit(), "ROLE_FORBIDDEN")
    rejected(c, "B1", "auction.commit", good.commit() | {"commitment": "AB" * 32}, "BAD_BODY")
    rejected(c, "B1", "auction.commit", good.commit() | {"side": "both"}, "BAD_BODY")
    rejected(c, "B1", "auction.bid", {"listing_id": HOUR, "wh": 1, "bid_price": 90_000},
             "SEALED_LISTING")  # fmt: skip
    c.ok("B1", "auction.commit", good.commit())
    rejected(c, "B2", "auction.commit", good.commit(), "BAD_BODY")  # one commitment, once
    # policy one: a new commitment replaces the old one, deposit for deposit
    newer = Sealed("B1", "bid", 500, 95_000)
    assert c.ok("B1", "auction.commit", newer.commit())["replaced"] == good.commitment
    assert c.q("balance", id_grid="B1")["escrow"] == DEPOSIT
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR}, ts=CLOSE_MS)
    rejected(c, "B1", "auction.reveal", good.reveal(), "UNKNOWN_COMMITMENT")
    c.ok("B1", "auction.reveal", newer.reveal())
    # everything revealed: the operator need not wait for the window
    result = c.ok("OPERATOR", "auction.clear", {"listing_id": HOUR}, ts=CLOSE_MS)
    assert result["forfeited"] == 0 and c.balance("B1") == 10_000_000
    check_invariants(c.contract)


def test_a_listing_in_its_reveal_is_not_settled() -> None:
    """Found by the random event orders: settlement took a sealed listing that was closed but
    not yet cleared, so its escrow and deposits would never have been cleared."""
    c = _community()
    c.ok("B1", "auction.commit", Sealed("B1", "bid", 10, 90_000).commit())
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR}, ts=CLOSE_MS)
    rejected(c, "OPERATOR", "auction.settle", {"listing_id": HOUR}, "LISTING_OPEN",
             ts=CLOSE_MS + 10**8)  # fmt: skip


def test_an_invalid_order_behind_a_commitment_forfeits() -> None:
    c = _community()
    too_big = Sealed("S1", "offer", 6000, 40_000)  # PV rated 5000 W: 5000 Wh in the hour
    c.ok("S1", "auction.commit", too_big.commit())
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR}, ts=CLOSE_MS)
    rejected(c, "S1", "auction.reveal", too_big.reveal(), "RES_CAPACITY_EXCEEDED")
    result = c.ok("OPERATOR", "auction.clear", {"listing_id": HOUR}, ts=CLOSE_MS + WINDOW_MS)
    assert result["forfeited"] == DEPOSIT
    check_invariants(c.contract)


def test_open_book_transactions_and_sealed_ones_do_not_mix() -> None:
    c = Community()  # an open book
    c.admit("B1", "consumer", 20)
    c.mint("B1", 10**6)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    rejected(c, "B1", "auction.commit", Sealed("B1", "bid", 1, 50_000).commit(), "NOT_SEALED")
    rejected(c, "OPERATOR", "auction.clear", {"listing_id": HOUR}, "NOT_SEALED")


def test_an_order_key_commits_and_reveals_its_members_sealed_order() -> None:
    """A member's order key (its gateway's trading agent, ``member.set_order_key``) places the
    member's sealed orders as it places open ones: the commitment and the reveal are the
    member's, the escrow its money; the key still cannot transfer a token."""
    c = _community()
    agent = key(70)
    c.ok("B1", "member.set_order_key", {"id_grid": "B1", "public_key": hexkey(agent)})
    bid = Sealed("B1", "bid", 500, 60_000)
    c.ok(agent, "auction.commit", bid.commit())
    assert c.ok("OPERATOR", "auction.close", {"listing_id": HOUR}, ts=CLOSE_MS)["state"] == "REVEAL"
    assert c.ok(agent, "auction.reveal", bid.reveal(), ts=CLOSE_MS + 1)["escrow"] == 30_000
    assert [b["buyer"] for b in c.q("order_book", listing_id=HOUR)["bids"]] == ["B1"]
    rejected(c, agent, "token.transfer", {"to": "S1", "amount": 1}, "NOT_MEMBER")
    check_invariants(c.contract)
