"""Cluster file and key files: valid ones load, every broken one is refused naming its key."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import cluster as cl
from ledger import keys
from tests.ledger.strategies import json_values


def _doc(n: int = 4) -> dict[str, Any]:
    pubs = [keys.public_hex(keys.new_key()) for _ in range(n)]
    return cl.cluster_document(pubs, [7100 + i for i in range(n)], {"operator": "x"})


def test_document_round_trips(tmp_path: Path) -> None:
    doc = _doc()
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(doc))
    config = cl.load_cluster(path)
    assert config.n == 4 and config.f == 1
    assert config.replica(3).port == 7103
    assert config.timers["view_change_ms"] == cl.DEFAULT_TIMERS["view_change_ms"]
    assert config.limits == cl.DEFAULT_LIMITS
    doc["limits"] = {"max_clients": 10}
    assert cl.parse_cluster(doc).limits["max_clients"] == 10
    with pytest.raises(cl.ClusterFileError, match="replica 4 is not in the cluster"):
        config.replica(4)


BROKEN: list[tuple[str, Any, str]] = [
    ("f", 2, "replicas: f=2 needs exactly 7"),
    ("f", "1", "f: must be an integer"),
    ("f", True, "f: must be an integer"),
    ("version", 2, "version: must be 1"),
    ("replicas", {}, "replicas: must be a list"),
    ("timers", {"view_change_ms": 0}, "timers.view_change_ms: must be between"),
    ("timers", {"bogus": 1}, "timers.bogus: unknown setting"),
    ("batch", {"max_txs": -1}, "batch.max_txs: must be between"),
    ("batch", [], "batch: must be an object"),
    ("checkpoint_interval", 0, "checkpoint_interval: must be between"),
    ("log_window", 200, "log_window: must be a multiple"),
    ("log_window", 10, "log_window: must be between"),
    ("fetch_limit", 0, "fetch_limit: must be between"),
    ("timers", {"view_change_ms": 5000, "max_view_change_ms": 4000}, "must not exceed"),
    ("genesis", "none", "genesis: must be an object"),
    ("limits", {"max_clients": 0}, "limits.max_clients: must be between"),
    ("limits", {"max_client_frame": 4096}, "limits.max_client_frame: must be between"),
    ("limits", {"max_waiters": True}, "limits.max_waiters: must be an integer"),
    ("limits", {"sockets": 1}, "limits.sockets: unknown setting"),
    ("limits", [], "limits: must be an object"),
    ("extra", 1, "extra: unknown key"),
]


@pytest.mark.parametrize(("key", "value", "message"), BROKEN)
def test_broken_top_level_names_the_key(key: str, value: Any, message: str) -> None:
    doc = _doc()
    doc[key] = value
    with pytest.raises(cl.ClusterFileError, match=message):
        cl.parse_cluster(doc)


REPLICA_BROKEN: list[tuple[str, Any, str]] = [
    ("id", 3, r"replicas\[1\].id: must equal its position 1"),
    ("host", "localhost", r"replicas\[1\].host: not an IP address"),
    ("host", 7, r"replicas\[1\].host: must be an IP address string"),
    ("port", 0, r"replicas\[1\].port: must be between 1 and 65535"),
    ("port", 70000, r"replicas\[1\].port"),
    ("port", 7100, r"replicas\[1\].port: address 127.0.0.1:7100 used twice"),
    ("public_key", "zz" * 32, r"replicas\[1\].public_key: not hex"),
    ("public_key", "AB" * 32, r"replicas\[1\].public_key: must be lowercase hex"),
    ("public_key", "ab", r"replicas\[1\].public_key: must be 64"),
    ("nick", "x", r"replicas\[1\].nick: unknown field"),
]


@pytest.mark.parametrize(("key", "value", "message"), REPLICA_BROKEN)
def test_broken_replica_names_the_key(key: str, value: Any, message: str) -> None:
    doc = _doc()
    doc["replicas"][1][key] = value
    with pytest.raises(cl.ClusterFileError, match=message):
        cl.parse_cluster(doc)


def test_missing_keys_are_named() -> None:
    for key in ("version", "f", "replicas", "genesis"):
        doc = _doc()
        del doc[key]
        with pytest.raises(cl.ClusterFileError, match=f"^{key}: missing"):
            cl.parse_cluster(doc)
    doc = _doc()
    del doc["replicas"][2]["port"]
    with pytest.raises(cl.ClusterFileError, match=r"replicas\[2\].port: missing"):
        cl.parse_cluster(doc)


def test_duplicate_public_key_is_refused() -> None:
    doc = _doc()
    doc["replicas"][3]["public_key"] = doc["replicas"][0]["public_key"]
    with pytest.raises(cl.ClusterFileError, match=r"replicas\[3\].public_key: used twice"):
        cl.parse_cluster(doc)


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(cl.ClusterFileError, match="cannot read"):
        cl.load_cluster(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(cl.ClusterFileError, match="not JSON"):
        cl.load_cluster(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(cl.ClusterFileError):
        cl.load_cluster(binary)


JSON_VALUES = json_values(key=6)


@settings(max_examples=150, deadline=None)
@given(
    path=st.lists(
        st.sampled_from(
            [
                "f",
                "replicas",
                0,
                1,
                "port",
                "host",
                "id",
                "timers",
                "public_key",
                "genesis",
                "batch",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    value=JSON_VALUES,
)
def test_any_mutation_is_accepted_or_refused_cleanly(path: list[Any], value: Any) -> None:
    doc = copy.deepcopy(BASE)
    target: Any = doc
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            return
    try:
        target[path[-1]] = value
    except (IndexError, TypeError):
        return
    try:
        cl.parse_cluster(doc)
    except cl.ClusterFileError as exc:
        assert str(exc)


BASE = _doc()


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    key = keys.new_key()
    path = tmp_path / "r.key"
    keys.write_key(path, key)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert keys.public_hex(keys.load_key(path)) == keys.public_hex(key)
    with pytest.raises(FileExistsError):
        keys.write_key(path, key)


def test_key_file_refusals(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.load_key(tmp_path / "none.key")
    open_key = tmp_path / "open.key"
    keys.write_key(open_key, keys.new_key())
    os.chmod(open_key, 0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_key(open_key)
    for name, content in (("short", b"abcd\n"), ("nothex", b"zz" * 32), ("bin", b"\xff" * 64)):
        path = tmp_path / name
        path.write_bytes(content)
        os.chmod(path, 0o600)
        with pytest.raises(keys.KeyFileError):
            keys.load_key(path)
