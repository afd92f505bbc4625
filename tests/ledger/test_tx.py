"""Signed transactions: round trip, tamper detection, hostile wire input."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.tx import SignedTx, TxError, sign_tx
from tests.ledger.strategies import ints

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def test_sign_verify_round_trip_and_stable_id() -> None:
    tx = sign_tx(KEY, "token.transfer", {"to": "PT0002", "amount": 1500}, nonce=7)
    again = SignedTx.from_wire(tx.to_wire())
    assert again == tx and again.verify()
    assert tx.tx_id == sign_tx(KEY, "token.transfer", {"amount": 1500, "to": "PT0002"}, 7).tx_id
    assert tx.tx_id != sign_tx(KEY, "token.transfer", {"to": "PT0002", "amount": 1500}, 8).tx_id
    assert tx.to_contract().tx_id == tx.tx_id


@pytest.mark.parametrize(
    "field,value",
    [("nonce", 8), ("kind", "token.mint"), ("body", {"to": "PT0002", "amount": 1501})],
)
def test_any_change_breaks_the_signature(field: str, value: Any) -> None:
    wire = sign_tx(KEY, "token.transfer", {"to": "PT0002", "amount": 1500}, nonce=7).to_wire()
    wire[field] = value
    assert not SignedTx.from_wire(wire).verify()


def test_signature_of_another_key_fails() -> None:
    other = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    wire = sign_tx(other, "x.y", {}, 1).to_wire()
    wire["sender"] = sign_tx(KEY, "x.y", {}, 1).to_wire()["sender"]
    assert not SignedTx.from_wire(wire).verify()


wire_values = st.recursive(
    st.none() | st.booleans() | ints | st.text(max_size=70) | st.floats(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=6),
    max_leaves=12,
)


@settings(max_examples=300)
@given(wire_values)
def test_hostile_wire_values_raise_tx_error_only(value: Any) -> None:
    try:
        SignedTx.from_wire(value)
    except TxError:
        pass


@given(
    field=st.sampled_from(["body", "kind", "nonce", "sender", "sig"]),
    value=wire_values,
)
def test_each_field_replaced_by_garbage_is_rejected_or_unverifiable(field: str, value: Any) -> None:
    wire = sign_tx(KEY, "token.transfer", {"to": "PT0002", "amount": 1500}, nonce=7).to_wire()
    if wire[field] == value:
        return
    wire[field] = value
    try:
        tx = SignedTx.from_wire(wire)
    except TxError:
        return
    assert not tx.verify()


BODIES = st.dictionaries(
    st.text(max_size=6),
    st.none() | st.booleans() | ints | st.text(max_size=6) | st.lists(ints),
    max_size=4,
)


@settings(max_examples=100)
@given(body=BODIES, nonce=st.integers(0, 2**63 - 1), kind=st.text(min_size=1, max_size=10))
def test_kept_bytes_and_id_are_those_of_a_fresh_encoding(
    body: dict[str, Any], nonce: int, kind: str
) -> None:
    import dataclasses
    import hashlib

    from ledger.encoding import canonical
    from ledger.tx import TX_DOMAIN

    tx = SignedTx.from_wire(sign_tx(KEY, kind, body, nonce).to_wire())
    fresh = canonical({"body": body, "kind": kind, "nonce": nonce, "sender": tx.sender.hex()})
    assert tx.payload == fresh and tx.signing_bytes() == TX_DOMAIN + fresh
    assert tx.tx_id == hashlib.sha256(fresh).hexdigest() and tx.verify()
    # a copy with another body never inherits the kept bytes or id
    other = dataclasses.replace(tx, body={"changed": True})
    assert other.tx_id != tx.tx_id and not other.verify()


def test_a_parsed_transaction_keeps_the_wire_dict_it_came_from() -> None:
    from ledger.encoding import canonical
    from ledger.pbft.simulation import client_key

    signed = sign_tx(client_key(1), "token.transfer", {"to": "M00001", "amount": 3}, 9)
    wire = signed.to_wire()
    parsed = SignedTx.from_wire(wire)
    assert parsed.wire() is wire and canonical(wire) == canonical(parsed.to_wire())
    built = SignedTx(parsed.sender, parsed.kind, parsed.body, parsed.nonce, parsed.signature)
    assert built.wire() == wire and built.wire() is not wire  # made, not kept
