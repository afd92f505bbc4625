"""Property tests of the canonical encoding."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.encoding import EncodingError, canonical, decode, digest
from tests.ledger.strategies import ints, json_values

values = st.recursive(
    st.none() | st.booleans() | ints | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip_is_exact(value: Any) -> None:
    data = canonical(value)
    assert decode(data) == value
    assert canonical(decode(data)) == data


@given(st.dictionaries(st.text(max_size=5), ints, max_size=8))
def test_key_order_does_not_change_the_bytes(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert canonical(d) == canonical(reversed_d)
    assert digest(d) == digest(reversed_d)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_encoding_error(data: bytes) -> None:
    try:
        value = decode(data)
    except EncodingError:
        return
    assert canonical(value) == data


@pytest.mark.parametrize(
    "raw",
    [b"1.5", b"NaN", b'{"a":1,"a":2}', b'{"b":1,"a":2}', b"[1, 2]", b"\xff", b'{"a":1', b"1e3"],
)
def test_non_canonical_or_hostile_input_is_rejected(raw: bytes) -> None:
    with pytest.raises(EncodingError):
        decode(raw)


@pytest.mark.parametrize("bad", [1.0, b"x", {1: 2}, {"a": [0.5]}, object()])
def test_values_outside_the_encoding_are_refused(bad: Any) -> None:
    with pytest.raises(EncodingError):
        canonical(bad)


@given(values)
def test_bytes_equal_the_standard_library_json_output(value: Any) -> None:
    """The encoding is fixed by its rules, not by the library that writes it: the fast writer
    must produce what the standard library's sorted, compact, non-ASCII-escaping JSON does."""
    import json

    try:
        expected = json.dumps(
            value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates are not UTF-8: both must refuse
        with pytest.raises(EncodingError):
            canonical(value)
        return
    assert canonical(value) == expected


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_refused_both_ways(big: int) -> None:
    with pytest.raises(EncodingError):
        canonical(big)
    with pytest.raises(EncodingError):
        decode(str(big).encode())



@given(
    bodies=st.lists(
        st.dictionaries(st.text(max_size=5), json_values(leaves=6), max_size=3), max_size=4
    ),
    ts=st.integers(0, 2**63 - 1),
    height=st.integers(1, 2**63 - 1),
    prev=st.binary(min_size=32, max_size=32),
    with_cert=st.booleans(),
)
def test_a_block_encoded_from_its_batch_bytes_is_its_canonical_encoding(
    bodies: list[dict[str, Any]], ts: int, height: int, prev: bytes, with_cert: bool
) -> None:
    """The executor stores ``Block.encoded()``, spliced from the batch's own bytes; it must be
    byte for byte ``canonical(block.to_wire())``, which is what ``verify`` and state transfer
    decode and hash."""
    from ledger.pbft.block import Batch, Block, Certificate
    from ledger.pbft.simulation import client_key
    from ledger.tx import sign_tx

    txs = [sign_tx(client_key(0), "k.any", body, n) for n, body in enumerate(bodies)]
    batch = Batch.from_txs(ts, txs)
    cert = Certificate(3, height, batch.digest(), ((0, b"\1" * 64), (2, b"\2" * 64)))
    plain = Block(height, ts, prev, batch.wires, cert if with_cert else None)
    spliced = Block(
        height, ts, prev, batch.wires, cert if with_cert else None, batch_bytes=batch.encoded()
    )
    assert spliced.encoded() == plain.encoded() == canonical(plain.to_wire())
    # and the pre-prepare the primary sends it in
    from ledger.pbft.messages import PrePrepare

    pp = PrePrepare(3, height, batch.digest(), 1, b"\3" * 64, batch)
    assert pp.encoded() == canonical(pp.to_wire())
    assert pp.stripped().encoded() == canonical(pp.stripped().to_wire())
