"""``wattmesh replicas`` and ``ledger run --address``: arguments good, malformed and hostile
(exit code 2 with one line, never a traceback), and the proposed sets. The commands against a
running cluster are exercised in test_reconfig_processes.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.keys import new_key, public_hex, write_key
from ledger.setup import init_cluster
from tools.cli import main
from tools.replicas_cli import ReplicasError, new_set

KEY = public_hex(new_key())


def current(ids: list[int]) -> dict[str, Any]:
    return {
        "epoch": 1,
        "f": 1,
        "replicas": [
            {"id": i, "host": "10.0.0.1", "port": 7100 + i, "public_key": f"{i + 1:064x}"}
            for i in ids
        ],
    }


def args(action: str, **kw: Any) -> argparse.Namespace:
    defaults = {"replica": None, "id": None, "address": ("10.0.0.9", 7100), "public_key": KEY}
    return argparse.Namespace(action=action, **{**defaults, **kw})


def test_add_takes_the_next_id_and_remove_keeps_at_least_four() -> None:
    added = new_set(current([0, 1, 2, 4]), args("add"))
    assert [r["id"] for r in added] == [0, 1, 2, 4, 5]
    assert added[-1] == {"id": 5, "host": "10.0.0.9", "port": 7100, "public_key": KEY}
    assert [r["id"] for r in new_set(current([0, 1, 2, 3, 4]), args("remove", replica=1))] == [
        0, 2, 3, 4]  # fmt: skip
    with pytest.raises(ReplicasError, match="at least 4"):
        new_set(current([0, 1, 2, 3]), args("remove", replica=0))
    with pytest.raises(ReplicasError, match="not in the set"):
        new_set(current([0, 1, 2, 3, 4]), args("remove", replica=9))
    with pytest.raises(ReplicasError, match="taken"):
        new_set(current([0, 1, 2, 3]), args("add", id=2))


@pytest.mark.parametrize(
    "extra",
    [
        ["add", "--address", "replica-5.lan:7100"],
        ["add", "--address", "10.0.0.9"],
        ["add", "--address", "10.0.0.9:0"],
        ["add", "--address", "10.0.0.9:70000"],
        ["add", "--address", "10.0.0.9:x"],
        ["add", "--address", "10.0.0.9:7100", "--public-key", "zz" * 32],
        ["add", "--address", "10.0.0.9:7100", "--public-key", "/no/such/file.pub"],
        ["add", "--address", "10.0.0.9:7100", "--public-key", "00" * 32],  # small order
        ["add", "--address", "10.0.0.9:7100", "--public-key", KEY, "--id", "256"],
        ["remove", "--replica", "-1"],
        ["remove", "--replica", "x"],
        ["remove"],
    ],
)
def test_malformed_arguments_are_refused(extra: list[str], tmp_path: Path) -> None:
    action, rest = extra[0], extra[1:]
    argv = ["replicas", action, "--cluster", "c.json", "--key", "k", "--proposal-id", "p", *rest]
    if action == "add" and "--public-key" not in rest:
        argv += ["--public-key", KEY]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_a_missing_key_file_and_an_unreachable_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_cluster(tmp_path / "d", 4)
    cluster = str(tmp_path / "d" / "cluster.json")
    base = ["replicas", "approve", "--cluster", cluster, "--proposal-id", "p", "--timeout", "0.5"]
    assert main([*base, "--key", str(tmp_path / "nope.key")]) == 2
    assert "--key" in capsys.readouterr().err
    write_key(tmp_path / "m.key", new_key())
    assert main([*base, "--key", str(tmp_path / "m.key")]) == 1  # nobody listens
    assert "the ledger" in capsys.readouterr().err


def test_ledger_run_names_a_joiner_by_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_cluster(tmp_path / "d", 4)
    d = str(tmp_path / "d")
    assert main(["ledger", "run", "--dir", d, "--replica", "4"]) == 2
    assert "--address" in capsys.readouterr().err
    for bad in ("10.0.0.9", "host:7100", "10.0.0.9:0", "10.0.0.9:65536", ":"):
        assert main(["ledger", "run", "--dir", d, "--replica", "4", "--address", bad]) == 2
        assert "--address" in capsys.readouterr().err
    assert main(["ledger", "run", "--dir", d, "--replica", "256", "--address", "10.0.0.9:1"]) == 2


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30), st.text(max_size=12))
def test_any_address_or_replica_text_is_a_clean_refusal_or_accepted(
    address: str, replica: str
) -> None:
    for argv in (
        ["replicas", "add", "--cluster", "c", "--key", "k", "--proposal-id", "p",
         "--public-key", KEY, "--address", address],
        ["replicas", "remove", "--cluster", "c", "--key", "k", "--proposal-id", "p",
         "--replica", replica],
    ):  # fmt: skip
        try:
            main([*argv, "--timeout", "0.01"])
        except SystemExit as exc:
            assert exc.code == 2
