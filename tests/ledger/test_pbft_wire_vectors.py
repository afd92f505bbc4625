"""Test vectors of the consensus wire forms: the bytes every message encodes to, and the header
bytes its signature covers, pinned from the hand-written codecs the field specifications
replaced. A change to a spec that changes one byte of the wire fails here."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ledger.encoding import canonical, decode
from ledger.pbft.messages import Prepare, PrePrepare, Status, parse
from ledger.pbft.wire import WireError
from tests.ledger.test_pbft_messages import _samples

# (type, sha256(canonical(to_wire()))[:32 hex], sha256(canonical(header()))[:32 hex] or "")
VECTORS = [
    ("Request", "94f6a036a46314fae8f278255fff62b6", ""),
    ("PrePrepare", "c688f859cf9422ab124c53fef49bc7dc", "e1d890b6560a2fd89813881db7a02d90"),
    ("PrePrepare", "cd934fb7d2eac33a80d2f1cf4aa2f744", "e1d890b6560a2fd89813881db7a02d90"),
    ("Prepare", "07a1931b7aef80ff135597e75e84f48d", "d53af9f884b61e6e45834f06e984d557"),
    ("Commit", "0650a1905de835b6e087509862014d1c", "3c1a2413d522e9028b14544f047a32cf"),
    ("Checkpoint", "ad95f10ad140115eba2f971837591aef", "71129bc880abfab69be888d8d2aca46d"),
    ("ViewChange", "a1954d7f37ac356c058c607393e06e4d", "ee9e128e24f2ef895a2c576cf6602781"),
    ("ViewChange", "2420b87ef3b85d7bf6734fd14f01b35e", "ee9e128e24f2ef895a2c576cf6602781"),
    # V signed as references (sender, digest), the view-changes an attachment (was: signed in
    # full), so that a NEW-VIEW sent without them carries the same signature
    ("NewView", "b5a21cba1af7fe100476e191e736240f", "f6ba2cbd1f3e7b73fcba853c48934148"),
    ("Status", "730804b5bf2b0350473f32b53fdc2e06", "f0357aabdfbdd56a9a91e536939d1350"),
    ("FetchBlocks", "234267402ea1a9949d3670e7703b85ae", "0577011a46132320801e41fb522495bb"),
    ("Blocks", "eda1dd682d6ca04fa17a38b3099aa398", ""),
    ("Reply", "fd5c78aaa5357c76329b1d5fbbfcc137", ""),
    ("NewView", "8bdd4d9ca79bb4ad45d57a2d8144909f", "f6ba2cbd1f3e7b73fcba853c48934148"),
    # the batch by ids: the same signed header as the pre-prepare with its batch
    ("PrePrepare", "9e018e085e1c911953b24e4a937a67e9", "e1d890b6560a2fd89813881db7a02d90"),
    ("FetchPrePrepare", "b3eae81dd21b59e70fa087afc93add40", "cbade6b47c2e8afb3c11a0ed113f583a"),
]
STATUS = (
    b'{"e":9,"n":8,"r":2,"sig":"c57568c549f99cc5217a15f8fd4b83289de37cae0382d9aa070b509c474246fe'
    b'45a8eecbec25157ca8ea2030972d849f2827a2875c04d8d965254dfb19e40b05","t":"status","v":2}'
)
# variants, and those that still parse (see _outcomes); the NEW-VIEW's references and its
# form without attachments, the pre-prepare by ids and FETCH-PP added variants (was 3024,
# 538, "6d90e83a...")
OUTCOMES_ALL, OUTCOMES_OK = 3456, 594
OUTCOMES = "c6b03d30e969efc355e60a3b7bf08337"
PREPARE_HEADER = (
    b'{"d":"ea603d578bea7c04cdbee676d9f4d717338ff23d0f53f7683f00ec6a130b4da3","n":1,"r":1,'
    b'"t":"prepare","v":0}'
)


def _short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@pytest.mark.parametrize(("msg", "vector"), list(zip(_samples(), VECTORS, strict=True)))
def test_wire_and_signed_header_bytes_are_pinned(msg: Any, vector: tuple[str, str, str]) -> None:
    kind, wire, header = vector
    assert type(msg).__name__ == kind
    data = canonical(msg.to_wire())
    assert _short(data) == wire
    assert _short(canonical(msg.header())) == header if header else not hasattr(msg, "header")
    assert parse(decode(data)) == msg
    if isinstance(msg, PrePrepare):
        assert msg.encoded() == data


def test_two_vectors_in_full() -> None:
    samples = _samples()
    status, prepare = samples[9], samples[3]
    assert isinstance(status, Status) and isinstance(prepare, Prepare)
    assert canonical(status.to_wire()) == STATUS
    assert canonical(prepare.header()) == PREPARE_HEADER


MUTANTS = (None, -1, 0, 7, True, "x", "ab" * 32, [], {}, 2**63, [{}])


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where a field sits in a wire form, down to nested messages (two items of each list)."""
    found: list[tuple[Any, ...]] = []
    if len(prefix) > 4:
        return found
    items = sorted(value.items()) if isinstance(value, dict) else []
    if isinstance(value, list):
        items = list(enumerate(value[:2]))
    for key, inner in items:
        found.append((*prefix, key))
        found.extend(_paths(inner, (*prefix, key)))
    return found


def _variant(wire: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """``wire`` with the field at ``path`` set to ``value`` (dropped for ``DROP``)."""
    copy = decode(canonical(wire))
    inner = copy
    for key in path[:-1]:
        inner = inner[key]
    if value is DROP:
        del inner[path[-1]]
    else:
        inner[path[-1]] = value
    return copy  # type: ignore[no-any-return]


DROP = object()


def _outcomes() -> list[str]:
    """Every sample with each field (nested ones too) dropped or replaced by each of
    ``MUTANTS``: what ``parse`` makes of it (the message, or the error's text)."""
    found: list[str] = []
    for msg in _samples():
        wire = msg.to_wire()
        for path in _paths(wire):
            for value in (DROP, *MUTANTS):
                try:
                    parsed = parse(_variant(wire, path, value))
                    found.append("ok " + _short(canonical(parsed.to_wire())))
                except WireError as exc:
                    found.append(f"error {exc}")
    return found


def test_malformed_variants_are_refused_with_the_same_messages() -> None:
    """The same variants refused, with the same text, as by the hand-written parsers."""
    outcomes = _outcomes()
    assert len(outcomes) == OUTCOMES_ALL
    assert sum(o.startswith("ok") for o in outcomes) == OUTCOMES_OK
    assert _short("\n".join(outcomes).encode()) == OUTCOMES
