"""An operator's first day (issue 19, finding 6), against a real ledger (four replica processes):
``wattmesh gateway pubkey`` prints the key to register, ``wattmesh operator`` admits members and
registers their meters, meter ids are scoped by member (two homes both have a "grid" meter),
and a report the ledger refused as ``UNKNOWN_METER`` before its meter was registered is
delivered after registration instead of being dropped for good."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.config_parse import load_config
from gateway.daemon import Gateway
from gateway.outbox import DELIVERED, PENDING, RETRY_LATER, WAIT_REGISTRATION_MS
from ledger.keys import load_key, new_key, public_hex, write_key
from ledger_client.client import LedgerClient
from tests.gateway.conftest import Replicas, until, write_keystore
from tests.gateway.test_ledger_hil import KEY7, T0, reading
from tools.cli import main


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    """The command as a user runs it (its own event loop, in a thread beside the gateway's)."""
    assert await asyncio.to_thread(main, list(argv)) == code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _home(tmp: Path, name: str, member: str, cluster: Path) -> Path:
    d = tmp / name
    d.mkdir()
    write_keystore(d, {"7": {"key": KEY7.hex(), "name": "n7", "transport": "mqtt"}})
    cfg = d / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nid = "{name}"\nmember = "{member}"\ndata_dir = "data"\n'
        f'keystore = "nodes.json"\n[ledger]\ncluster = "{cluster}"\ntimeout_s = 2\n'
        "retry_initial_s = 1\nretry_max_s = 4\n"
        '[mqtt]\nport = 1\n[mqtt.discovery]\nenabled = false\n'
        '[[mqtt.nodes]]\nnode_id = 7\nmeter_id = "grid"\nreport = true\n'
    )
    return cfg


async def test_operator_registers_scoped_meters_and_a_refused_report_is_retried(
    tmp_path: Path, replicas: Replicas, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = replicas.dir / "cluster.json"
    op_key = str(replicas.dir / "operator.key")
    replicas.start()
    homes = {"home-1": "PT0001", "home-2": "PT0002"}
    cfgs = {h: _home(tmp_path, h, m, cluster) for h, m in homes.items()}
    pubs = {h: (await _cli(capsys, "gateway", "pubkey", "--config", str(c)))["public_key"]
            for h, c in cfgs.items()}  # fmt: skip
    on = ["--cluster", str(cluster)]
    for member in homes.values():
        wallet = new_key()  # the member's own key, apart from the gateway's
        write_key(tmp_path / f"{member}.key", wallet)
        r = await _cli(capsys, "operator", "member", "admit", *on, "--key", op_key,
                 "--id-grid", member, "--name", f"Home {member}",
                 "--email", f"{member.lower()}@example.org", "--address", "Rua 1, Lisboa",
                 "--register", str(tmp_path / "personal.sqlite"),
                 "--public-key", public_hex(wallet), "--role", "consumer")  # fmt: skip
        assert r["code"] == "OK", r
    # home-1's gateway runs before its meter is registered: the first report is refused
    cfg = load_config(cfgs["home-1"])
    clock = ManualClock(T0)
    gw = Gateway(cfg, clock=clock, node_keys={7: KEY7}, node_sources=[])
    task = asyncio.create_task(gw.run())
    try:
        await until(gw._started.is_set)
        for minute in range(16):  # 600 W for 16 minutes: one interval closes
            gw.on_frame(reading(minute + 1, minute * 10_000), "mqtt", clock.now_ms())
            await clock.advance(60_000)
        store = gw.store
        assert store is not None

        def first() -> Any:
            rows = store.outbox_all()
            return rows[0] if rows else None

        # refused: the ledger knows neither the meter nor (admission) the gateway's key yet
        await until(lambda: first() is not None and first().code in RETRY_LATER, 60,
                    "the ledger's refusal")  # fmt: skip
        assert first().state == PENDING and first().body["meter_id"] == "PT0001:grid"
        # the operator registers both homes' "grid" meters: no collision
        for home, member in homes.items():
            r = await _cli(capsys, "operator", "meter", "add", *on, "--key", op_key,
                     "--member", member, "--meter", "grid", "--gateway-key", pubs[home],
                     "--import-limit-w", "6900", "--export-limit-w", "0")
            assert r["code"] == "OK" and r["result"]["meter_id"] == f"{member}:grid", r
            # the member's consent, with its own wallet key (reports bill it)
            r = await _cli(capsys, "operator", "meter", "confirm", *on,
                           "--key", str(tmp_path / f"{member}.key"), "--member", member,
                           "--meter", "grid")  # fmt: skip
            assert r["code"] == "OK", r
        listed = await _cli(capsys, "operator", "meter", "list", *on, "--key", op_key,
                            "--member", "PT0001")
        assert [m["meter_id"] for m in listed] == ["PT0001:grid"]

        async def delivered() -> None:
            while first().state != DELIVERED:
                await clock.advance(WAIT_REGISTRATION_MS // 4)
                await asyncio.sleep(0.05)

        await asyncio.wait_for(delivered(), 60)
        assert first().code == "OK" and first().attempts >= 2
    finally:
        gw.stop()
        await task
    async with LedgerClient.from_cluster_file(cluster, load_key(Path(op_key)),
                                              timeout_s=30) as client:  # fmt: skip
        reports = await client.query("reports", meter_id="PT0001:grid")
    assert len(reports) == 1 and reports[0]["import_wh"] > 0
    # a stolen gateway: the operator revokes home-2's meter
    r = await _cli(capsys, "operator", "meter", "revoke", *on, "--key", op_key,
                   "--member", "PT0002", "--meter", "grid")
    assert r["code"] == "OK", r
    # bad input is a usage error, not a traceback
    with pytest.raises(SystemExit):  # a member id with the scope separator: a usage error
        main(["operator", "meter", "add", *on, "--key", op_key, "--member", "PT:1",
              "--meter", "grid", "--gateway-key", pubs["home-1"]])
    assert main(["operator", "pubkey", "--key", str(tmp_path / "absent.key")]) == 2


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["operator", "dr", "--role", "dso", "--gateway", "home-1", "--id", "d1",
          "--start", "2026-06-15T21:00Z", "--end", "2026-06-15T19:00Z", "--max-w", "0"],
         2, "end must come after start"),
        (["operator", "dr", "--role", "dso", "--gateway", "home-1", "--id", "d1",
          "--start", "soon", "--end", "2026-06-15T19:00Z", "--max-w", "0"], 2, "start"),
        (["operator", "pubkey"], 2, "absent.key"),
    ],
)
def test_operator_input_is_refused_before_anything_is_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    key = tmp_path / "dso.key"
    write_key(key, new_key())
    argv = [*argv, "--key", str(key if argv[1] == "dr" else tmp_path / "absent.key")]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("bad", ["grid", "x=", "=1", "a b=1", "limit=1.5"])
def test_a_bad_limit_is_a_usage_error(bad: str) -> None:
    with pytest.raises(SystemExit):
        main(["operator", "meter", "add", "--cluster", "c", "--key", "k", "--member", "PT1",
              "--meter", "grid", "--gateway-key", "ab" * 32, "--import-limit-w", "1",
              "--export-limit-w", "0", "--limit", bad])


def test_status_without_a_store_or_of_garbage_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[gateway]\nid = "g"\ndata_dir = "d"\n')
    assert main(["gateway", "status", "--config", str(cfg)]) == 1
    assert "no store yet" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "gateway.db").write_bytes(b"not a database" * 100)
    assert main(["gateway", "status", "--config", str(cfg)]) == 1
    assert "cannot read the store" in capsys.readouterr().err
