"""The interval aggregator: splitting, carries, resets, roll-overs, gaps, implausible values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import intervals as iv
from gateway.intervals import INTERVAL_MS, IntervalAggregator, MeterSpec

T0 = 1_795_000_000_000 - 1_795_000_000_000 % INTERVAL_MS  # an interval boundary
MIN = 60_000


def agg(**spec: int | None) -> IntervalAggregator:
    a = IntervalAggregator(grace_ms=0)
    a.add_meter("m", MeterSpec(**spec))  # type: ignore[arg-type]
    return a


def test_interval_names_are_utc_starts() -> None:
    import calendar

    start = calendar.timegm((2026, 11, 24, 13, 15, 0)) * 1000
    assert iv.interval_name(start) == "2026-11-24T13:15"
    assert iv.interval_name(start + INTERVAL_MS - 1) == "2026-11-24T13:29"


def test_energy_splits_across_a_boundary_in_proportion_to_time() -> None:
    a = agg()
    a.sample("m", T0 + 13 * MIN, 0, 0)
    a.sample("m", T0 + 17 * MIN, 4_000_000, 0)  # 4 kWh over 4 min: 2 before, 2 after the edge
    (closed,) = a.tick(T0 + INTERVAL_MS)
    assert (closed.import_wh, closed.flags) == (2_000, 0)
    (second,) = a.tick(T0 + 2 * INTERVAL_MS)
    assert (second.import_wh, second.flags) == (2_000, 0)


def test_sub_wh_remainders_are_carried_not_lost() -> None:
    a = agg()
    a.sample("m", T0 + 1, 0, 0)
    a.sample("m", T0 + 2, 1_500, 700)
    first = a.tick(T0 + INTERVAL_MS)[0]
    a.sample("m", T0 + INTERVAL_MS + 5, 2_000, 1_400)
    second = a.tick(T0 + 2 * INTERVAL_MS)[0]
    assert (first.import_wh, first.export_wh) == (1, 0)
    assert (second.import_wh, second.export_wh) == (1, 1)


def test_reset_counts_new_value_and_is_flagged() -> None:
    a = agg()
    a.sample("m", T0 + MIN, 900_000, 0)
    a.sample("m", T0 + 2 * MIN, 1_000_000, 0)
    a.sample("m", T0 + 3 * MIN, 50_000, 0)  # the meter was reset to 0 and counted 50 Wh
    (c,) = a.tick(T0 + INTERVAL_MS)
    assert c.import_wh == 150 and c.flags & iv.RESET


def test_a_node_that_restored_its_counters_counts_on_from_them() -> None:
    """After a power cut the node reloads counters saved up to its save step earlier; that step
    back is no energy (the reset rule would bill the node's whole lifetime again)."""
    a = agg()  # the default plausibility bound: 100 kW, far above a lifetime of 20 kWh here
    a.sample("m", T0 + 1 * MIN, 20_000_000, 7_000)
    a.sample("m", T0 + 2 * MIN, 20_008_000, 7_000)  # 8 Wh
    # half an hour without power; back 5 Wh behind, flagged as restored, then counting on
    a.sample("m", T0 + 32 * MIN, 20_003_000, 6_000, iv.RESTORED)
    a.sample("m", T0 + 33 * MIN, 20_012_000, 6_500)  # 9 Wh after the restore
    closed = a.tick(T0 + 3 * INTERVAL_MS)
    assert sum(c.import_wh for c in closed) == 8 + 9
    assert sum(c.export_wh for c in closed) == 0
    assert closed[2].flags & iv.RESTORED and not any(c.flags & iv.RESET for c in closed)
    # without the flag the same step back is a reset, as before: the new value counts
    b = agg()
    b.sample("m", T0 + 1 * MIN, 20_000_000, 0)
    b.sample("m", T0 + 2 * MIN, 3_000, 0)
    (first,) = b.tick(T0 + INTERVAL_MS)
    assert first.import_wh == 3 and first.flags & iv.RESET


def test_rollover_counts_the_wrap() -> None:
    a = agg(modulus_mwh=2**32 * 1000)
    a.sample("m", T0 + MIN, 2**32 * 1000 - 20_000, 0)
    a.sample("m", T0 + 2 * MIN, 30_000, 0)
    (c,) = a.tick(T0 + INTERVAL_MS)
    assert c.import_wh == 50 and c.flags & iv.ROLLOVER and not c.flags & iv.RESET


def test_implausible_jump_is_dropped_then_rebased() -> None:
    a = agg(max_power_w=10_000)
    a.sample("m", T0 + MIN, 0, 0)
    assert not a.sample("m", T0 + 2 * MIN, 10**12, 0)  # wrong value
    assert a.sample("m", T0 + 3 * MIN, 100_000, 0)  # back to normal: 100 Wh in 2 min
    (c,) = a.tick(T0 + INTERVAL_MS)
    assert c.import_wh == 100 and c.flags & iv.IMPLAUSIBLE
    for k in range(3):  # the counter truly moved: rebased after three samples in a row
        a.sample("m", T0 + INTERVAL_MS + (k + 1) * MIN, 10**12 + k, 0)
    a.sample("m", T0 + INTERVAL_MS + 5 * MIN, 10**12 + 2 + 7_000, 0)
    (d,) = a.tick(T0 + 2 * INTERVAL_MS)
    assert d.flags & iv.REBASED and d.import_wh == 7


def test_values_beyond_the_modulus_are_never_a_baseline() -> None:
    mod = 10_000_000 * 1000  # the PZEM wraps at 9999.99 kWh
    a = agg(modulus_mwh=mod, max_power_w=23_000)
    a.sample("m", T0 + MIN, 50_000_000, 0)
    for k in range(4):  # a meter serving garbage (2**32 - 1 Wh) for longer than REBASE_AFTER
        assert not a.sample("m", T0 + (2 + k) * MIN, (2**32 - 1) * 1000, 0)
    assert a.sample("m", T0 + 7 * MIN, 50_120_000, 0)
    (c,) = a.tick(T0 + INTERVAL_MS)
    assert c.import_wh == 120 and c.flags & iv.IMPLAUSIBLE
    assert not c.flags & (iv.ROLLOVER | iv.REBASED)


def test_gap_marks_missing_interval_and_carries_energy_forward() -> None:
    a = agg()
    a.sample("m", T0 + MIN, 0, 0)
    (first,) = a.tick(T0 + INTERVAL_MS)
    (missing,) = a.tick(T0 + 2 * INTERVAL_MS)
    assert missing.flags & iv.MISSING and missing.import_wh == 0
    a.sample("m", T0 + 2 * INTERVAL_MS + MIN, 3_000_000, 0)
    (third,) = a.tick(T0 + 3 * INTERVAL_MS)
    assert third.import_wh == 3_000 and third.flags & iv.GAP
    assert first.import_wh == 0


def test_stale_and_unknown_samples_are_rejected() -> None:
    a = agg()
    assert a.sample("m", T0 + MIN, 0, 0)
    assert not a.sample("m", T0 + MIN, 5, 0)
    assert not a.sample("x", T0 + MIN, 5, 0)
    assert not a.sample("m", T0 + 2 * MIN, -1, 0)
    assert a.rejected == 3


def test_snapshot_restore_continues_identically() -> None:
    a = agg()
    a.sample("m", T0 + MIN, 0, 0)
    a.sample("m", T0 + 5 * MIN, 123_456, 7_000)
    b = agg()
    b.restore(a.snapshot())
    for x in (a, b):
        x.sample("m", T0 + 20 * MIN, 500_000, 9_000)
    assert a.tick(T0 + 3 * INTERVAL_MS) == b.tick(T0 + 3 * INTERVAL_MS)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 40 * MIN), st.integers(0, 500_000), st.integers(0, 100_000)),
        min_size=1,
        max_size=40,
    )
)
def test_energy_is_conserved(steps: list[tuple[int, int, int]]) -> None:
    """Whatever the sample timing (gaps included), reported Wh + held mWh = counter advance."""
    a = agg(max_power_w=10**9)
    t, imp, exp = T0 + 1, 0, 0
    a.sample("m", t, imp, exp)
    closed: list[iv.Interval] = []
    for dt, di, de in steps:
        t, imp, exp = t + dt, imp + di, exp + de
        assert a.sample("m", t, imp, exp)
        closed += a.tick(t)
    held_imp, held_exp = a.totals_mwh()["m"]
    assert sum(c.import_wh for c in closed) * 1000 + held_imp == imp
    assert sum(c.export_wh for c in closed) * 1000 + held_exp == exp
    starts = [c.start_ms for c in closed]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([None, 10_000_000_000, 2**64]),
    st.lists(
        st.tuples(
            st.integers(-5, 20 * MIN),
            st.integers(-1, 2**64 + 5),
            st.integers(-1, 2**33),
        ),
        max_size=30,
    ),
)
def test_hostile_counter_sequences_never_report_negative_energy(
    modulus: int | None, steps: list[tuple[int, int, int]]
) -> None:
    a = agg(modulus_mwh=modulus, max_power_w=23_000)
    t = T0
    closed: list[iv.Interval] = []
    for dt, imp, exp in steps:
        t += dt
        a.sample("m", t, imp, exp)
        closed += a.tick(t)
    closed += a.tick(t + 2 * INTERVAL_MS)
    assert all(c.import_wh >= 0 and c.export_wh >= 0 for c in closed)
    # and never more than the meter's maximum power allows (plus the 1 Wh granularity slack)
    assert all(
        c.import_wh <= 23_000 * 2 * (INTERVAL_MS + 20 * MIN) // 3_600_000 + 2 for c in closed
    )


def test_flag_bits_name_the_ledgers_report_flags() -> None:
    """The gateway stores interval flags as bits; their names are the ledger's, in its order."""
    from ledger.contract import REPORT_FLAGS

    bits = [iv.RESET, iv.ROLLOVER, iv.GAP, iv.MISSING, iv.IMPLAUSIBLE, iv.REBASED, iv.RESTORED,
            iv.LATE, iv.CLIPPED, iv.BEHIND, iv.SIGN_UNKNOWN]  # fmt: skip
    assert [iv.FLAG_NAMES[b] for b in bits] == list(REPORT_FLAGS)
    assert iv.flag_names(iv.CLIPPED | iv.GAP) == ["gap", "clipped"]
    assert iv.flag_names(0) == []
