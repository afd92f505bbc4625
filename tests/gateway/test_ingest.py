"""The ingest path on its own (sans-IO): raw frames and times in, intervals and acks out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware import frame
from gateway.config import NodeConfig
from gateway.ingest import Ack, Ingest, MeterInfo
from gateway.intervals import INTERVAL_MS, IntervalAggregator
from gateway.verify import FrameVerifier

T0 = 1_795_000_500_000 // INTERVAL_MS * INTERVAL_MS  # an interval's start
KEY = bytes(range(32))


def ingest(keys: dict[int, bytes] | None = None) -> Ingest:
    return Ingest(
        FrameVerifier({7: KEY} if keys is None else keys),
        IntervalAggregator(interval_ms=INTERVAL_MS, grace_ms=30_000),
        [NodeConfig(7, "mqtt", "n7", topic="n7")],
    )


def reading(seq: int, import_mwh: int, *, channel: int = 0, node: int = 7) -> bytes:
    payload = frame.pack_reading({
        "channel": channel, "uptime_s": seq, "voltage_dv": 2300, "current_ma": 1000,
        "power_dw": 2300, "apparent_dva": 2300, "pf_milli": 1000, "relays": 1, "flags": 0,
        "import_mwh": import_mwh, "export_mwh": 0,
    })  # fmt: skip
    return frame.encode(KEY, frame.T_READING, node, seq, payload)


def test_readings_fold_into_intervals_that_close_with_their_energy() -> None:
    ing = ingest()
    assert ing.take_new_meters() == [MeterInfo("n7", "node-mqtt")]
    for k, mwh in enumerate((1_000_000, 1_100_000, 1_250_000)):
        result = ing.frame(reading(k + 1, mwh), "mqtt", T0 + k * 300_000)
        assert result is not None and result.node_id == 7 and result.reading is not None
    assert [r.import_mwh for r in ing.take_pending()] == [1_000_000, 1_100_000, 1_250_000]
    assert ing.latest["n7"].import_mwh == 1_250_000
    ing.frame(reading(4, 1_300_000), "mqtt", T0 + INTERVAL_MS)
    closed = ing.aggregator.tick(T0 + INTERVAL_MS + 30_000)
    assert [(i.meter_id, i.start_ms, i.import_wh) for i in closed] == [("n7", T0, 300)]


def test_a_second_clamp_is_a_new_meter_and_an_ack_goes_back_to_the_caller() -> None:
    ing = ingest()
    ing.take_new_meters()
    result = ing.frame(reading(1, 5_000, channel=1), "ble", T0)
    assert result is not None and result.reading is not None
    assert result.reading.meter_id == "n7.1" and result.reading.source == "ble"
    assert ing.take_new_meters() == [MeterInfo("n7.1", "node-mqtt")]
    ack = frame.encode(KEY, frame.T_ACK, 7, 2, frame.pack_ack(41, 0, frame.S_OK, 1))
    assert ing.frame(ack, "ble", T0 + 1) == (7, None, Ack(7, 41, frame.S_OK))
    assert ing.pending and ing.ignored_frames == 0


def test_forged_replayed_unconfigured_and_command_frames_meter_nothing() -> None:
    ing = ingest({7: KEY, 9: KEY})
    good = reading(1, 1_000)
    assert ing.frame(good[:-1] + bytes([good[-1] ^ 1]), "mqtt", T0) is None  # tag
    assert ing.frame(good, "mqtt", T0) is not None
    assert ing.frame(good, "mqtt", T0 + 1) is None  # replay
    stranger = reading(1, 1_000, node=9)  # keyed, but not configured
    assert ing.frame(stranger, "mqtt", T0 + 2) == (9, None, None)
    command = frame.encode(KEY, frame.T_COMMAND, 7, 2, frame.pack_command(0, frame.A_ON))
    assert ing.frame(command, "mqtt", T0 + 3) is None  # the gateway's own kind: wrong way
    assert ing.ignored_frames == 1 and len(ing.take_pending()) == 1
    assert ing.verifier.counts()["dropped_direction"] == 1
    assert ing.verifier.counts()["dropped_tag"] == 1
    assert ing.verifier.counts()["dropped_replay"] == 1


def test_a_reading_the_store_could_not_take_goes_back_first_in_line() -> None:
    ing = ingest()
    ing.frame(reading(1, 1_000), "mqtt", T0)
    batch = ing.take_pending()
    ing.frame(reading(2, 2_000), "mqtt", T0 + 1_000)
    ing.put_back(batch)
    assert [r.import_mwh for r in ing.pending] == [1_000, 2_000]


def test_state_survives_a_snapshot() -> None:
    ing = ingest()
    ing.frame(reading(5, 1_000), "mqtt", T0)
    again = ingest()
    again.restore(ing.snapshot())
    assert again.frame(reading(5, 1_000), "mqtt", T0 + 1) is None  # the window came back
    assert again.frame(reading(6, 2_000), "mqtt", T0 + 2) is not None


@given(st.binary(max_size=300), st.sampled_from(["mqtt", "ble"]), st.integers(0, 2**50))
def test_any_bytes_are_judged_never_raised(raw: bytes, transport: str, t: int) -> None:
    ing = ingest()
    assert ing.frame(raw, transport, t) is None
    assert not ing.pending
