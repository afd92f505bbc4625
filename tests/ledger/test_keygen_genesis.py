"""``wattmesh ledger keygen|genesis|personal``: keys made where they are used, a cluster file
assembled from public keys, the operator's register of personal data. Good use, and hostile
arguments and files refused with one line naming what is wrong (exit 2), never a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.cluster import load_cluster
from ledger.keys import load_key, new_key, public_hex, write_key
from ledger.personal import Opening, PersonalDataError, PersonalStore, commitment
from ledger.setup import init_cluster
from tests.ledger.test_cli import main


def _keygen(d: Path, i: int, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["ledger", "keygen", "--dir", str(d), "--replica", str(i)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["public_key_file"]).read_text().strip() == out["public_key"]
    return str(out["public_key"])


def test_keygen_writes_the_secret_0600_and_prints_only_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = _keygen(tmp_path / "h0", 0, capsys)
    key_file = tmp_path / "h0" / "replica-0.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert public_hex(load_key(key_file)) == public
    assert key_file.read_text().strip() not in public
    # never overwritten
    assert main(["ledger", "keygen", "--dir", str(tmp_path / "h0"), "--replica", "0"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert public_hex(load_key(key_file)) == public
    assert main(["ledger", "keygen", "--dir", str(tmp_path / "op"), "--operator"]) == 0
    assert {p.name for p in (tmp_path / "op").iterdir()} == {"operator.key", "operator.pub"}
    capsys.readouterr()
    assert main(["ledger", "keygen", "--out", str(tmp_path / "wallet.key")]) == 0
    assert (tmp_path / "wallet.pub").exists()
    assert main(["ledger", "keygen", "--replica", "1"]) == 2  # where?
    assert main(["ledger", "keygen", "--out", "x.key", "--dir", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["ledger", "keygen", "--dir", str(tmp_path)])  # whose?


def _four_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    specs = []
    for i in range(4):
        public = _keygen(tmp_path / f"h{i}", i, capsys)
        specs += ["--replica", f"10.9.0.{i + 1}:7100:{public}"]
    assert main(["ledger", "keygen", "--dir", str(tmp_path / "op"), "--operator"]) == 0
    capsys.readouterr()
    return specs


def test_genesis_assembles_the_cluster_from_public_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = _four_hosts(tmp_path, capsys)
    specs[-1] = f"10.9.0.4:7100:{tmp_path / 'h3' / 'replica-3.pub'}"  # a .pub file works too
    out = tmp_path / "cluster.json"
    argv = ["ledger", "genesis", *specs, "--operator-key", str(tmp_path / "op" / "operator.pub"),
            "--treasury", "1000", "--batch-max", "200", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    cluster = load_cluster(out)
    assert [r.host for r in cluster.replicas] == [f"10.9.0.{i}" for i in (1, 2, 3, 4)]
    for i, r in enumerate(cluster.replicas):
        assert r.public_key.hex() == public_hex(load_key(tmp_path / f"h{i}" / f"replica-{i}.key"))
    operator = cluster.genesis["members"][0]
    assert operator["public_key"] == public_hex(load_key(tmp_path / "op" / "operator.key"))
    assert cluster.genesis["allocations"] == {"OPERATOR": 1000}
    assert cluster.batch["max_txs"] == 200
    assert main(argv) == 2  # the cluster file is never overwritten
    assert "never overwritten" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda s: s[:-2], "must be 3f+1"),
        (lambda s: [*s[:-1], "10.9.0.4:7100"], "expected HOST:PORT:KEY"),
        (lambda s: [*s[:-1], "10.9.0.4:http:" + "ab" * 32], "port must be an integer"),
        (lambda s: [*s[:-1], "10.9.0.4:70000:" + s[1].rsplit(":", 1)[1]], "port"),
        (lambda s: [*s[:-1], "10.9.0.4:7100:" + "00" * 32], "not a valid Ed25519"),
        (lambda s: [*s[:-1], "10.9.0.4:7100:/no/such.pub"], "neither 64 hex"),
        (lambda s: [*s[:-1], "host.example:7100:" + s[1].rsplit(":", 1)[1]], "not an IP"),
        (lambda s: [*s[:-1], s[1]], "used twice"),
    ],
)
def test_genesis_refuses_bad_replicas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object, needle: str
) -> None:
    specs = _four_hosts(tmp_path, capsys)
    bad = change(specs)  # type: ignore[operator]
    argv = ["ledger", "genesis", *bad, "--operator-key", str(tmp_path / "op" / "operator.pub"),
            "--out", str(tmp_path / "cluster.json")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "cluster.json").exists()


def test_genesis_refuses_bad_operator_and_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = _four_hosts(tmp_path, capsys)
    out = ["--out", str(tmp_path / "cluster.json")]
    params = tmp_path / "params.json"
    params.write_text('{"clearing_rule": "dutch"}')
    whole = tmp_path / "genesis.json"
    whole.write_text("[1]")
    pub = str(tmp_path / "op" / "operator.pub")
    for extra, needle in [
        ([], "--operator-key: required"),
        (["--operator-key", "zz"], "--operator-key"),
        (["--operator-key", pub, "--params", str(params)], "clearing_rule"),
        (["--operator-key", pub, "--params", str(tmp_path / "none.json")], "--params"),
        (["--operator-key", pub, "--genesis", str(whole)], "not both"),
        (["--genesis", str(whole)], "JSON object"),
        (["--operator-key", pub, "--operator-id", "a b"], "id_grid"),
    ]:
        assert main(["ledger", "genesis", *specs, *extra, *out]) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (extra, err)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=90), min_size=1, max_size=5))
def test_any_replica_soup_is_refused_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], soup: list[str]
) -> None:
    argv = ["ledger", "genesis", "--operator-key", "ab" * 32, "--out", str(tmp_path / "c.json")]
    for item in soup:
        if item.startswith("-"):
            continue
        argv += ["--replica", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattmesh ledger: ") and "Traceback" not in err


def test_a_replica_refuses_to_run_with_another_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "c"
    init_cluster(d, 4, genesis={"toy": 1})
    (d / "replica-2.key").unlink()
    write_key(d / "replica-2.key", new_key())
    argv = ["ledger", "run", "--dir", str(d), "--replica", "2",
            "--contract", "tests.ledger.toy_contract:make_contract"]  # fmt: skip
    assert main(argv) == 2
    assert "not the key cluster.json names for replica 2" in capsys.readouterr().err


def test_personal_register(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "personal.sqlite"
    data = {"name": "Ana Silva", "email": "ana@example.org", "address": "Rua 1, Porto"}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(data)))
    assert main(["ledger", "personal", "add", "--db", str(db), "--id-grid", "PT0001"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert db.stat().st_mode & 0o777 == 0o600
    opening = Opening(**added["opening"])
    assert commitment(opening) == added["commitment"]  # the member can check the chain's hash
    assert main(["ledger", "personal", "show", "--db", str(db), "--id-grid", "PT0001"]) == 0
    assert json.loads(capsys.readouterr().out) == added
    assert main(["ledger", "personal", "erase", "--db", str(db), "--id-grid", "PT0001"]) == 0
    assert json.loads(capsys.readouterr().out)["erased"] is True
    assert b"ana@example.org" not in db.read_bytes()
    assert main(["ledger", "personal", "show", "--db", str(db), "--id-grid", "PT0001"]) == 2
    for stdin, needle in [
        ("{", "not JSON"),
        ("[]", "expected"),
        (json.dumps({**data, "phone": "1"}), "expected"),
        (json.dumps({**data, "email": "no-at"}), "e-mail"),
        (json.dumps({**data, "name": ""}), "name"),
        (json.dumps({**data, "address": "x" * 300}), "address"),
    ]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        assert main(["ledger", "personal", "add", "--db", str(db), "--id-grid", "PT0002"]) == 2
        assert needle in capsys.readouterr().err, stdin
    db.chmod(0o644)
    assert main(["ledger", "personal", "show", "--db", str(db), "--id-grid", "PT0002"]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_commitments_hide_the_data_and_bind_it() -> None:
    a = Opening("Ana", "a@x.org", "Rua 1", "00" * 32)
    assert commitment(a) != commitment(Opening("Ana", "a@x.org", "Rua 1", "01" * 32))
    assert commitment(a) != commitment(Opening("Ana", "a@x.org", "Rua 2", "00" * 32))
    with pytest.raises(PersonalDataError, match="salt"):
        commitment(Opening("Ana", "a@x.org", "Rua 1", "00"))
    with pytest.raises(PersonalDataError, match="salt"):
        commitment(Opening("Ana", "a@x.org", "Rua 1", "zz"))


def test_register_refuses_a_second_entry_and_bad_ids(tmp_path: Path) -> None:
    with PersonalStore(tmp_path / "p.sqlite") as store:
        store.add("PT1", "Ana", "a@x.org", "Rua 1")
        with pytest.raises(PersonalDataError, match="already"):
            store.add("PT1", "Ana", "a@x.org", "Rua 1")
        with pytest.raises(PersonalDataError, match="id_grid"):
            store.add("a b", "Ana", "a@x.org", "Rua 1")
        assert store.erase("PT1") and not store.erase("PT1")
