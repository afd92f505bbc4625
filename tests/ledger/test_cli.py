"""``wattmesh ledger`` argument handling: a good init, and hostile arguments and files refused
with one line that names what is wrong (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.cli import register
from ledger.cluster import load_cluster
from ledger.keys import load_key, public_hex


def main(argv: list[str]) -> int:
    """The ``wattmesh`` parser with only the ledger's commands, so these tests do not depend on
    other parts' command modules."""
    parser = argparse.ArgumentParser(prog="wattmesh")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


GENESIS = {"operator": "test"}


def _init(tmp_path: Path, *extra: str) -> int:
    genesis = tmp_path / "genesis.json"
    genesis.write_text(json.dumps(GENESIS))
    return main(["ledger", "init", "--genesis", str(genesis), *extra])


def test_init_writes_keys_and_cluster_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "c"
    assert _init(tmp_path, "--replicas", "7", "--dir", str(d), "--view-change-ms", "300") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replicas"] == 7 and out["f"] == 2
    config = load_cluster(d / "cluster.json")
    assert config.n == 7 and config.timers["view_change_ms"] == 300
    assert all(r.host == "127.0.0.1" for r in config.replicas)
    assert len({r.port for r in config.replicas}) == 7
    for i in range(7):
        path = d / f"replica-{i}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert public_hex(load_key(path)) == config.replica(i).public_key.hex()
    assert stat.S_IMODE((d / "operator.key").stat().st_mode) == 0o600
    assert config.genesis == GENESIS
    # a second init into the same directory is refused and changes nothing
    before = (d / "cluster.json").read_bytes()
    assert _init(tmp_path, "--dir", str(d)) == 2
    assert "already holds" in capsys.readouterr().err
    assert (d / "cluster.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "3"], "--replicas: must be 3f+1"),
        (["--replicas", "5"], "--replicas: must be 3f+1"),
        (["--replicas", "0"], "--replicas: must be 3f+1"),
        (["--replicas", "100"], "--replicas: at most 64"),
        (["--base-port", "80"], "--base-port: must be between"),
        (["--base-port", "65534"], "--base-port: must be between"),
        (["--view-change-ms", "1"], "timers.view_change_ms"),
        (["--batch-max", "0"], "batch.max_txs"),
    ],
)
def test_init_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert _init(tmp_path, "--dir", str(tmp_path / "c"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c" / "cluster.json").exists()


def test_argparse_level_garbage_exits_2(tmp_path: Path) -> None:
    for args in (["--replicas", "four"], ["--replicas", "-4"], []):
        with pytest.raises(SystemExit) as exc:
            main(["ledger", "init", *args])
        assert exc.value.code == 2


def test_bad_genesis_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "g.json"
    for content in ("[1, 2]", "{", ""):
        bad.write_text(content)
        assert main(["ledger", "init", "--dir", str(tmp_path / "c"), "--genesis", str(bad)]) == 2
        assert "--genesis" in capsys.readouterr().err
    missing = str(tmp_path / "none.json")
    assert main(["ledger", "init", "--dir", str(tmp_path / "c"), "--genesis", missing]) == 2


@pytest.fixture
def cluster_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A cluster made by ``ledger init`` (its output read and dropped)."""
    d = tmp_path / "c"
    assert _init(tmp_path, "--dir", str(d)) == 0
    capsys.readouterr()
    return d


def test_commands_on_a_broken_cluster_file_name_the_key(
    cluster_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = cluster_dir
    doc = json.loads((d / "cluster.json").read_text())
    doc["replicas"][2]["port"] = "seven"
    (d / "cluster.json").write_text(json.dumps(doc))
    for command in (
        ["ledger", "run", "--dir", str(d), "--replica", "0"],
        ["ledger", "status", "--dir", str(d)],
        ["ledger", "verify", "--dir", str(d), "--replica", "0"],
        ["ledger", "cluster", "--dir", str(d)],
    ):
        assert main(command) == 2
        assert "replicas[2].port: must be an integer" in capsys.readouterr().err
    assert main(["ledger", "run", "--dir", str(tmp_path / "nowhere"), "--replica", "0"]) == 2
    assert "cannot read cluster file" in capsys.readouterr().err


def test_replica_out_of_range_and_bad_contract(
    cluster_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = cluster_dir
    assert main(["ledger", "run", "--dir", str(d), "--replica", "9"]) == 2
    assert "replica 9 is not in the cluster" in capsys.readouterr().err
    assert main(["ledger", "verify", "--dir", str(d), "--replica", "9"]) == 2
    for spec in ("nomodule", "no_such_module_x:f", "json:no_such_function"):
        assert main(["ledger", "run", "--dir", str(d), "--replica", "0", "--contract", spec]) == 2
        assert "--contract" in capsys.readouterr().err


def test_status_of_a_cluster_that_is_down_reports_each_replica(
    cluster_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = cluster_dir
    assert main(["ledger", "status", "--dir", str(d), "--timeout", "0.5"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["replica"] for line in lines] == [0, 1, 2, 3]
    assert all("unreachable" in line["error"] for line in lines)


@settings(max_examples=40, deadline=None)
@given(
    args=st.lists(
        st.sampled_from(
            [
                "--replicas",
                "--base-port",
                "--batch-max",
                "-1",
                "4",
                "x",
                "70000",
                "7",
                "--checkpoint-interval",
                "0",
                "",
            ]
        ),
        max_size=5,
    )
)
def test_any_argument_soup_is_handled(
    tmp_path_factory: pytest.TempPathFactory, args: list[str]
) -> None:
    d = tmp_path_factory.mktemp("soup")
    try:
        code = main(
            ["ledger", "init", "--dir", str(d / "c"), "--genesis", str(GENESIS_FILE(d)), *args]
        )
    except SystemExit as exc:
        code = exc.code  # argparse refusing an argument
    assert code in (0, 2)


def GENESIS_FILE(d: Path) -> Path:
    path = d / "genesis.json"
    path.write_text(json.dumps(GENESIS))
    return path


def test_run_with_a_genesis_the_contract_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "c"
    bad = tmp_path / "bad-genesis.json"
    bad.write_text(json.dumps({"version": 99, "members": []}))
    assert main(["ledger", "init", "--dir", str(d), "--genesis", str(bad)]) == 0
    capsys.readouterr()
    assert main(["ledger", "run", "--dir", str(d), "--replica", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattmesh ledger: replica 0:") and "Traceback" not in err


def test_a_store_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c"
    assert _init(tmp_path, "--dir", str(d)) == 0
    (d / "replica-0.sqlite").write_bytes(b"this is not SQLite" * 100)
    capsys.readouterr()
    assert main(["ledger", "verify", "--dir", str(d), "--replica", "0"]) == 1
    assert "store:" in capsys.readouterr().err
    args = ["ledger", "run", "--dir", str(d), "--replica", "0", "--contract",
            "tests.ledger.toy_contract:make_contract"]  # fmt: skip
    assert main(args) == 2
    assert "store:" in capsys.readouterr().err
