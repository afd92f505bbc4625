"""``wattmesh bench ble`` runs the real BLE path and prints JSON (checked for correctness here,
never for speed: figures come from the command)."""

from __future__ import annotations

import json

import pytest

from tools.cli import main


def test_bench_ble_prints_json_with_every_frame_delivered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "ble", "--plugs", "2", "--frames", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "ble" and out["plugs"] == 2 and out["frames"] == 6
    assert out["frames_per_s"] > 0 and out["connect_all_s"] > 0
    assert out["drop_to_next_frame_ms_max"] > 0 and out["command_ack_ms_median"] > 0
    stats = out["stats"]
    assert stats["connects"] == 2 + 5 and stats["reconnects"] == 5 and stats["commands"] == 20
    # 6 readings, one per tick after each of the 5 drops, and the 20 acks
    assert stats["notifications"] == 6 + 5 + 20
    restart = out["gateway_restart"]  # a killed gateway host, then a new one, over HCI/TCP
    assert restart["hosts_served"] == 2
    assert restart["first_host_all_connected_s"] > 0 and restart["after_kill_all_connected_s"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plugs", "0"], "--plugs '0': must be in 1..200"),
        (["--plugs", "x"], "not a whole number"),
        (["--frames", "10001"], "1..10000"),
    ],
)
def test_bench_ble_refuses_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "ble", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
