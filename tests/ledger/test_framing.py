"""Framing: the sans-IO frame decoder against any split of a stream and arbitrary bytes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.framing import HEADER, FrameDecoder, FrameError, decode_payload, encode_frame
from tests.ledger.strategies import ints

messages = st.fixed_dictionaries(
    {"t": st.text(max_size=10)},
    optional={
        "n": ints,
        "s": st.text(max_size=20),
        "l": st.lists(ints),
    },
)


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(messages, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_decoder_reassembles_any_split(msgs: list[dict[str, Any]], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(stream[a:b])
    assert [decode_payload(p) for p in out] == msgs
    assert dec.pending == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_decoder_never_raises_anything_but_frame_error(data: bytes) -> None:
    dec = FrameDecoder(max_frame=1000)
    try:
        for payload in dec.feed(data):
            try:
                decode_payload(payload)
            except FrameError:
                pass
    except FrameError:
        pass


def test_oversized_header_and_non_objects_are_frame_errors() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder(max_frame=10).feed(HEADER.pack(11))
    for payload in (b"[1]", b'{"t":1}', b"\xff", b"1.5", b'{"t":"x"', b'{"t":"x"}x'):
        with pytest.raises(FrameError):
            decode_payload(payload)
    # a repeated key keeps its last value (RFC 8259 leaves it open; message parsers re-check
    # every field and signatures cover re-encoded headers, so nothing rests on the raw bytes)
    assert decode_payload(b'{"t":"x","t":"y"}') == {"t": "y"}
