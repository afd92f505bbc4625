"""PBFT wire forms: exact round trips, signatures bound to content, hostile input -> WireError."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.encoding import canonical, decode
from ledger.pbft.block import NULL_DIGEST, Batch, Block, Certificate, commit_header
from ledger.pbft.config import PbftConfig, PbftConfigError
from ledger.pbft.messages import (
    BatchIds,
    Blocks,
    Checkpoint,
    Commit,
    FetchBlocks,
    FetchPrePrepare,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Reply,
    Request,
    Status,
    ViewChange,
    parse,
    sign,
    verify,
    view_change_refs,
)
from ledger.pbft.signing import Keyring, Signer
from ledger.pbft.simulation import make_config, make_txs, replica_key
from ledger.pbft.wire import WireError
from tests.ledger.strategies import ints

CFG = make_config(4)
KEYRING = Keyring(r.public_key for r in CFG.replicas)
SIGNERS = [Signer(i, replica_key(i)) for i in range(4)]
TXS = make_txs(3)
BATCH = Batch.from_txs(1000, TXS)
D = BATCH.digest()
BATCH_IDS = tuple(tx.tx_id for tx in TXS)


def _samples() -> list[Any]:
    pp = sign(PrePrepare(0, 1, D, 0), SIGNERS[0])
    prepares = tuple(sign(Prepare(0, 1, D, i), SIGNERS[i]) for i in (1, 2))
    cps = tuple(sign(Checkpoint(4, b"\x07" * 32, i), SIGNERS[i]) for i in range(3))
    vc = sign(ViewChange(1, 4, cps, (PreparedProof(pp, prepares),), 1), SIGNERS[1])
    vc_full = ViewChange(
        vc.view, vc.stable_seq, vc.checkpoint_proof, vc.prepared, 1, vc.sig, {D: BATCH}
    )
    nv = sign(
        NewView(
            1,
            view_change_refs((vc,)),
            (sign(PrePrepare(1, 5, NULL_DIGEST, 1), SIGNERS[1]),),
            1,
            view_changes=(vc,),
        ),
        SIGNERS[1],
    )
    cert = Certificate(
        0, 1, D, tuple((i, SIGNERS[i].sign(commit_header(0, 1, D, i))) for i in range(3))
    )
    block = Block(1, 1000, bytes(32), BATCH.wires, cert)
    return [
        Request(TXS[0]),
        PrePrepare(pp.view, pp.seq, pp.digest, 0, pp.sig, BATCH),
        pp,
        prepares[0],
        sign(Commit(0, 1, D, 3), SIGNERS[3]),
        cps[0],
        vc,
        vc_full,
        nv,
        sign(Status(2, 9, 8, 2), SIGNERS[2]),
        sign(FetchBlocks(3, 1), SIGNERS[1]),
        Blocks((block,), 2, cps),
        Reply(0, TXS[0].tx_id, 1, {"code": "OK", "message": "", "result": {}}, 3),
        nv.compact(),  # as a primary sends it: the view-changes by reference only
        PrePrepare(pp.view, pp.seq, pp.digest, 0, pp.sig, ids=BatchIds(1000, BATCH_IDS)),
        sign(FetchPrePrepare(0, 1, 2), SIGNERS[2]),
    ]


@pytest.mark.parametrize("msg", _samples(), ids=lambda m: type(m).__name__)
def test_round_trip_through_canonical_bytes(msg: Any) -> None:
    data = canonical(msg.to_wire())
    again = parse(decode(data))
    assert again == msg
    assert canonical(again.to_wire()) == data


@pytest.mark.parametrize(
    "msg", [m for m in _samples() if hasattr(m, "sig")], ids=lambda m: type(m).__name__
)
def test_signature_binds_every_header_field(msg: Any) -> None:
    assert verify(msg, KEYRING)
    wire = msg.to_wire()
    for key in wire:
        if key in ("sig", "t", "batch", "batches", "vc", "ids"):
            continue  # attachments: bound by the digests the header names
        hostile = dict(wire)
        value = hostile[key]
        hostile[key] = (
            value + 1
            if isinstance(value, int)
            else (("0" if value[0] != "0" else "1") + value[1:] if isinstance(value, str) else [])
        )
        try:
            changed = parse(hostile)
        except WireError:
            continue
        assert not verify(changed, KEYRING), key
    # a valid signature by another replica is not this replica's signature
    other = (msg.replica + 1) % 4
    assert not KEYRING.verify(other, msg.sig, msg.header())


def test_batch_attachment_is_bound_by_digest() -> None:
    wire = _samples()[1].to_wire()
    wire["batch"]["ts"] += 1
    pp = parse(wire)
    assert isinstance(pp, PrePrepare) and pp.batch is not None
    assert pp.batch.digest() != pp.digest  # the replica rejects it (test_pbft_normal)
    vc = _samples()[7].to_wire()
    vc["batches"][D.hex()]["ts"] += 1
    with pytest.raises(WireError):
        parse(vc)


def test_certificate_needs_a_quorum_of_distinct_valid_signers() -> None:
    block = _samples()[11].blocks[0]
    cert = block.certificate
    assert cert is not None and cert.verify(KEYRING, CFG.quorum)
    doubled = Certificate(cert.view, cert.seq, cert.digest, cert.commits[:2] + cert.commits[:1])
    assert not doubled.verify(KEYRING, CFG.quorum)
    forged = Certificate(
        cert.view, cert.seq, cert.digest, (*cert.commits[:2], (3, cert.commits[2][1]))
    )
    assert not forged.verify(KEYRING, CFG.quorum)
    other_digest = Certificate(cert.view, cert.seq, NULL_DIGEST, cert.commits)
    assert not other_digest.verify(KEYRING, CFG.quorum)


def test_block_hash_chains_and_ignores_view_and_certificate() -> None:
    block = _samples()[11].blocks[0]
    bare = Block(block.height, block.timestamp_ms, block.prev_hash, block.txs)
    assert bare.hash() == block.hash()
    assert Block(2, 1000, block.hash(), ()).hash() != Block(2, 1000, bytes(32), ()).hash()
    assert Block(1, 1001, bytes(32), block.txs).hash() != block.hash()


def test_the_epoch_of_a_view_change_is_signed_and_left_out_for_epoch_zero() -> None:
    signer = SIGNERS[1]
    zero = sign(ViewChange(3, 0, (), (), 1), signer)
    assert "e" not in zero.to_wire() and "e" not in zero.header()
    two = sign(ViewChange(3, 0, (), (), 1, epoch=2), signer)
    wire = two.to_wire()
    assert wire["e"] == 2 and two.header()["e"] == 2 and parse(wire) == two
    assert verify(two, KEYRING) and verify(zero, KEYRING)
    assert not verify(parse({**wire, "e": 3}), KEYRING)  # the epoch is under the signature
    assert not verify(parse({k: v for k, v in wire.items() if k != "e"}), KEYRING)
    for bad in (0, -1, "2", True, None):
        with pytest.raises(WireError):
            parse({**wire, "e": bad})
    nv = sign(NewView(3, view_change_refs((two,)), (), 3, epoch=2), SIGNERS[3])
    assert parse(nv.to_wire()) == nv and nv.to_wire()["e"] == 2
    status = sign(Status(3, 50, 48, 1, epoch=2), signer)
    assert status.to_wire()["ep"] == 2 and parse(status.to_wire()) == status
    assert "ep" not in sign(Status(3, 50, 48, 1), signer).to_wire()
    assert not verify(parse({**status.to_wire(), "ep": 1}), KEYRING)


wire_values = st.recursive(
    st.none() | st.booleans() | ints | st.text(max_size=70),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=6),
    max_leaves=16,
)


@settings(max_examples=200, deadline=None)
@given(wire_values)
def test_arbitrary_values_raise_wire_error_only(value: Any) -> None:
    try:
        parse(value)
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, 12),
    path_seed=st.integers(0, 2**32),
    replacement=wire_values,
)
def test_mutated_valid_messages_raise_wire_error_or_parse(
    index: int, path_seed: int, replacement: Any
) -> None:
    # to_wire() shares the request and batch dicts a message was built from (no copy on the
    # hot path), so mutate a copy, not the samples the wire vectors pin
    wire = copy.deepcopy(_samples()[index].to_wire())
    # walk to a random nested container and replace (or delete) one entry
    node: Any = wire
    rng = path_seed
    for _ in range(4):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[rng % len(keys)]
        rng //= 7
        child = node[key]
        if isinstance(child, dict | list) and child and rng % 3:
            node = child
            continue
        if rng % 5 == 0 and isinstance(node, dict):
            del node[key]
        else:
            node[key] = replacement
        break
    try:
        parse(wire)
    except WireError:
        pass


def _cluster(n: int = 4) -> dict[str, Any]:
    return {
        "version": 1,
        "replicas": [
            {"id": r.id, "host": r.host, "port": r.port, "public_key": r.public_key.hex()}
            for r in make_config(n).replicas
        ],
        "timers": {"view_change_ms": 500, "request_timeout_ms": 2000, "tick_ms": 20},
        "batch": {"max_txs": 100, "max_delay_ms": 3},
        "checkpoint_interval": 16,
        "genesis": {},
    }


def test_config_from_cluster_file_any_f() -> None:
    cfg = PbftConfig.from_dict(_cluster())
    assert (cfg.n, cfg.f, cfg.quorum, cfg.batch_max, cfg.batch_delay_ms) == (4, 1, 3, 100, 3)
    assert cfg.view_change_timeout_ms == 500 and cfg.log_window == 64
    big = PbftConfig.from_dict(_cluster(10))
    assert (big.f, big.quorum, big.primary(13)) == (3, 7, 3)
    five = PbftConfig.from_dict(_cluster(5))
    assert (five.f, five.quorum) == (1, 4)  # any two quorums of 4 out of 5 share 3 > f


@pytest.mark.parametrize(
    "path,value,key",
    [
        (("replicas",), [], "replicas"),
        (("replicas", 1, "port"), 0, "replicas[1].port"),
        (("replicas", 2, "public_key"), "zz" * 32, "replicas[2].public_key"),
        (("replicas", 0, "id"), 3, "replicas[0].id"),
        (("batch", "max_txs"), 0, "batch.max_txs"),
        (("batch", "max_delay_ms"), "5", "batch.max_delay_ms"),
        (("timers", "view_change_ms"), True, "timers.view_change_ms"),
        (("checkpoint_interval",), -1, "checkpoint_interval"),
        (("f",), 2, "f"),
        (("timers",), 3, "timers"),
    ],
)
def test_config_errors_name_the_key(path: tuple[Any, ...], value: Any, key: str) -> None:
    data = _cluster()
    node: Any = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(PbftConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        PbftConfig.from_dict(data)


@settings(max_examples=100, deadline=None)
@given(wire_values)
def test_hostile_cluster_values_raise_config_error_only(value: Any) -> None:
    data = _cluster()
    data["replicas"][1] = value
    with pytest.raises(PbftConfigError):
        PbftConfig.from_dict(data)
