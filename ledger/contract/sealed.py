"""Sealed orders: commit while the listing is open, reveal after the bidding closes, then clear.

In a listing opened with ``params.sealed_bids`` a member sends ``auction.commit`` with the
SHA-256 of its order and a salt it keeps (``order_commitment``), and a deposit
(``params.commit_deposit``) is held. ``auction.close`` (Bid_Closed) moves the listing to
``REVEAL``: each member sends ``auction.reveal`` with the order and the salt; the contract checks
that they hash to one of the sender's commitments and that the order is valid (band, RES,
capacity, the bid's escrow, which is taken then) and returns the deposit at once.
``auction.clear`` (operator) clears once every commitment is revealed or
``params.reveal_window_ms`` has passed since the close; clearing uses only revealed orders, and
a commitment never revealed (or whose order turns out invalid) forfeits its deposit to the grid
account, the community's purse.

Order of service. In an open book "first in" is the order of the blocks, which the primary
chooses. Here every revealed order gets the key ``SHA-256(seed || commitment)`` where the seed
is the SHA-256 of the XOR of all revealed salts: nobody knows it until the last order is
revealed, so neither the primary (which can reorder and delay transactions within its
powers) nor a member grinding salts can choose a place. Orders are served in key order: ``seq``
in a sealed listing is this rank, 1..n. A member that withholds its reveal to change the seed
gets one other draw, and pays its deposit for it.
"""

from __future__ import annotations

import hashlib
import re
from operator import itemgetter
from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.clearing import payment
from ledger.contract.codes import (
    ALREADY_REVEALED,
    BAD_BODY,
    INSUFFICIENT_FUNDS,
    NOT_REVEALING,
    NOT_SEALED,
    REVEAL_OPEN,
    ROLE_FORBIDDEN,
    UNKNOWN_COMMITMENT,
    Rejected,
)
from ledger.contract.market import (
    AUTHORIZE_OFFERS,
    REVEAL,
    add_bid,
    add_offer,
    check_bid,
    check_offer,
    clear_listing,
    listing_of,
)
from ledger.contract.registry import BUYER_ROLES, SELLER_ROLES, sender_member, sender_operator
from ledger.contract.state import ContractState
from ledger.encoding import canonical

ORDER_DOMAIN = b"wattmesh/order/v1\x00"
SEED_DOMAIN = b"wattmesh/seed/v1\x00"
SIDES = ("offer", "bid")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_first = itemgetter(0)
REVEAL_FIELDS = ("listing_id", "side", "wh", "price", "res_id", "salt")


def order_commitment(
    listing_id: str, member: str, side: str, wh: int, price: int, res_id: str, salt: bytes
) -> str:
    """The hex SHA-256 a member commits to: its order (``res_id`` is ``""`` for a bid) and a
    32-byte secret salt, bound to the listing and the member, so a commitment cannot be copied."""
    order = {"listing_id": listing_id, "member": member, "side": side, "wh": wh, "price": price,
             "res_id": res_id, "salt": salt.hex()}  # fmt: skip
    return hashlib.sha256(ORDER_DOMAIN + canonical(order)).hexdigest()


def _hex32(body: Any, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or _HEX32.fullmatch(value) is None:
        raise Rejected(BAD_BODY, f"{name} must be 64 lowercase hex characters")
    return value


def _sealed(st: ContractState, listing_id: str, state: str) -> dict[str, Any]:
    listing = listing_of(st, listing_id)
    if not listing["sealed"]:
        raise Rejected(NOT_SEALED, f"listing {listing_id} has an open book: auction.offer/bid")
    if listing["state"] != state:
        code = NOT_REVEALING if state == REVEAL else "LISTING_CLOSED"
        raise Rejected(code, f"listing {listing_id} is {listing['state']}, not {state}")
    return listing


def commit(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """A sealed order: ``{listing_id, side, commitment}``; holds the deposit. Under policy
    ``one`` it replaces the member's previous commitment in the listing (deposit returned)."""
    body = tx.body
    f.exact(body, ("listing_id", "side", "commitment"))
    listing_id = f.listing_id(body)
    side = f.choice(body, "side", SIDES)
    commitment = _hex32(body, "commitment")
    member = sender_member(st, tx)
    listing = _sealed(st, listing_id, AUTHORIZE_OFFERS)
    if st.role(member) not in (SELLER_ROLES if side == "offer" else BUYER_ROLES):
        raise Rejected(ROLE_FORBIDDEN, f"a {st.role(member)} may not {side}")
    other = listing["sides"].get(member)
    if other is not None and other != side:
        raise Rejected("BOTH_SIDES", f"{member} already committed an {other} in this listing")
    if commitment in listing["commits"]:
        raise Rejected(BAD_BODY, "that commitment is already in this listing")
    deposit = st.data["params"]["commit_deposit"]
    old = listing["mine"].get(member) if listing["policy"] == "one" else None
    returned = deposit if old is not None else 0
    have = st.balance(member) + returned
    if have < deposit:
        raise Rejected(INSUFFICIENT_FUNDS, f"a commitment holds {deposit}, have {have}")
    if old is not None:
        del listing["commits"][old]
        st.credit(member, returned)
    st.debit(member, deposit)
    listing["commits"][commitment] = [member, side, False]
    listing["sides"][member] = side
    if listing["policy"] == "one":
        listing["mine"][member] = commitment
    result = {"listing_id": listing_id, "commitment": commitment, "deposit": deposit}
    if old is not None:
        result["replaced"] = old
    return result


def reveal(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """``{listing_id, side, wh, price, res_id ("" for a bid), salt}`` after the close."""
    body = tx.body
    f.exact(body, REVEAL_FIELDS)
    listing_id = f.listing_id(body)
    side = f.choice(body, "side", SIDES)
    wh = f.positive(body, "wh", f.MAX_WH)
    price = f.integer(body, "price")
    res_id = f.ident(body, "res_id") if side == "offer" else body.get("res_id")
    if side == "bid" and res_id != "":
        raise Rejected(BAD_BODY, "res_id of a bid must be empty")
    salt = bytes.fromhex(_hex32(body, "salt"))
    member = sender_member(st, tx)
    listing = _sealed(st, listing_id, REVEAL)
    deposit = st.data["params"]["commit_deposit"]
    commitment = order_commitment(listing_id, member, side, wh, price, str(res_id), salt)
    entry = listing["commits"].get(commitment)
    if entry is None or entry[0] != member:
        raise Rejected(UNKNOWN_COMMITMENT, "the order and salt match none of your commitments")
    if entry[2]:
        raise Rejected(ALREADY_REVEALED, "this commitment is already revealed")
    # the order is held to every rule an open order is; its seq is its reveal position until
    # the clearing ranks it
    position = len(listing["revealed"]) + 1
    if side == "offer":
        check_offer(st, listing, listing_id, member, str(res_id), wh, price)
        add_offer(listing, position, member, wh, price, str(res_id))
        escrow = 0
    else:
        escrow = check_bid(st, listing, listing_id, member, wh, price, returned=deposit)
        add_bid(listing, position, member, wh, price)
    # the deposit has done its work: it comes back now (against the bid's escrow, if any)
    if escrow > deposit:
        st.debit(member, escrow - deposit)
    elif deposit > escrow:
        st.credit(member, deposit - escrow)
    entry[2] = True
    listing["revealed"].append([commitment, salt.hex()])
    return {"listing_id": listing_id, "commitment": commitment, "escrow": escrow}


def service_keys(revealed: list[list[str]]) -> list[bytes]:
    """The key of service of each revealed order, in reveal order: SHA-256 of the seed and the
    commitment, where the seed hashes the XOR of every revealed salt (XOR: the same whatever
    order the reveals came in, without sorting them)."""
    mixed = 0
    for _c, salt in revealed:
        mixed ^= int(salt, 16)
    seed = hashlib.sha256(SEED_DOMAIN + mixed.to_bytes(32, "big")).digest()
    sha256 = hashlib.sha256
    return [sha256(seed + bytes.fromhex(c)).digest() for c, _s in revealed]


def clear(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """Clear a sealed listing: once every commitment is revealed, or the reveal window is over."""
    body = tx.body
    f.exact(body, ("listing_id",))
    listing_id = f.listing_id(body)
    sender_operator(st, tx)
    listing = _sealed(st, listing_id, REVEAL)
    window_end = listing["closed_ms"] + st.data["params"]["reveal_window_ms"]
    unrevealed = sum(1 for entry in listing["commits"].values() if not entry[2])
    if unrevealed and ctx.timestamp_ms < window_end:
        raise Rejected(REVEAL_OPEN, f"{unrevealed} commitments unrevealed until {window_end} ms")
    # Commit. Until now an order's seq was its reveal position (1..n, in the order the primary
    # chose); now it becomes the rank of its key of service, 1..n over both sides.
    keys = service_keys(listing["revealed"])
    rank = [0] * (len(keys) + 1)
    for r, position in enumerate(sorted(range(len(keys)), key=keys.__getitem__), start=1):
        rank[position + 1] = r
    for rows in (listing["offers"], listing["bids"]):
        for row in rows:
            row[0] = rank[row[0]]
        rows.sort(key=_first)
    # revealed orders had their deposits back at reveal; the others' go to the community
    forfeited = unrevealed * st.data["params"]["commit_deposit"]
    st.data["grid"]["balance"] += forfeited
    result = clear_listing(st, listing, listing_id, ctx)
    result["forfeited"] = forfeited
    result["unrevealed"] = unrevealed
    return result


def held(listing: dict[str, Any], deposit: int) -> int:
    """Micro-tokens a listing holds before it clears: unrevealed commitments' deposits and
    bids' escrow."""
    if listing["state"] not in (AUTHORIZE_OFFERS, REVEAL):
        return 0
    unrevealed = sum(1 for entry in listing["commits"].values() if not entry[2])
    return unrevealed * deposit + sum(payment(wh, p) for _s, _b, wh, p in listing["bids"])
