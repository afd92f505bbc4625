from datetime import UTC, date, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.forecast import (
    MAX_HORIZON,
    MIN_HISTORY,
    ForecastError,
    backtest,
    fit_ridge,
    forecast,
    seasonal_naive,
)
from gateway.ems.synthetic import household_profile

START = date(2026, 1, 1)


def test_profile_is_deterministic_and_independent_of_the_span():
    year = household_profile("prosumer", 7, START, 60)
    again = household_profile("prosumer", 7, START, 60)
    assert np.array_equal(year.load_wh, again.load_wh)
    day = household_profile("prosumer", 7, date(2026, 2, 10), 1)
    cut = slice(40 * 96, 41 * 96)
    assert np.array_equal(day.load_wh, year.load_wh[cut])
    assert np.array_equal(day.pv_wh, year.pv_wh[cut])
    other = household_profile("prosumer", 8, START, 60)
    assert not np.array_equal(other.load_wh, year.load_wh)


def test_profile_is_physically_plausible():
    p = household_profile("prosumer", 3, START, 365)
    assert p.load_wh.dtype == np.int64 and (p.load_wh > 0).all()
    assert 2_000 < p.load_wh.sum() / 1000 < 8_000  # kWh a year for a household
    pv_kwh = p.pv_wh.sum() / 1000
    assert 2_000 < pv_kwh < 6_000  # 3 kWp in Portugal
    assert p.pv_wh.reshape(-1, 96)[:, :16].sum() == 0  # no sun before 04:00 UTC
    summer = p.pv_wh[170 * 96:200 * 96].sum()
    winter = p.pv_wh[0:30 * 96].sum()
    assert summer > 1.8 * winter
    consumer = household_profile("consumer", 3, START, 3)
    assert consumer.pv_wh.sum() == 0
    with pytest.raises(ValueError, match="kind"):
        household_profile("factory", 1, START, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="days"):
        household_profile("consumer", 1, START, 0)


def test_seasonal_naive_repeats_the_last_day_and_week():
    hist = np.arange(96 * 8)
    assert seasonal_naive(hist, 4).tolist() == hist[-96:-92].tolist()
    two_days = seasonal_naive(hist, 192)
    assert two_days[100] == hist[-96 + 4]
    week = forecast(hist, datetime(2026, 1, 9, tzinfo=UTC), 3, "naive_week")
    assert week.tolist() == hist[-672:-669].tolist()


def test_ridge_beats_seasonal_naive_on_held_out_days():
    """Fixed-seed synthetic data, so the margin is a fact about the models, not luck."""
    p = household_profile("prosumer", 11, START, 150)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    load = backtest(p.load_wh, first, horizon=192)
    assert load["ridge"].mae_wh < 0.85 * load["naive"].mae_wh
    pv = backtest(p.pv_wh, first, horizon=192)
    assert pv["ridge"].mae_wh < pv["naive"].mae_wh
    assert 0 < load["ridge"].nmae < 1


def test_ridge_forecast_shape_and_night():
    p = household_profile("prosumer", 5, START, 60)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    pv = forecast(p.pv_wh, start, 192)
    assert pv.shape == (192,) and pv.dtype == np.int64 and (pv >= 0).all()
    assert pv[:12].sum() == 0 and pv[96:108].sum() == 0  # nights stay dark
    model = fit_ridge(p.load_wh, start)
    assert model.predict(p.load_wh, start, 96).shape == (96,)


@pytest.mark.parametrize(
    ("history", "horizon", "text"),
    [
        (np.zeros(10), 96, "needs"),
        (np.zeros((2, 96 * 10)), 96, "1-D"),
        (np.full(MIN_HISTORY, np.nan), 96, "finite"),
        (-np.ones(MIN_HISTORY), 96, "negative"),
        (np.zeros(MIN_HISTORY), 0, "horizon"),
        (np.zeros(MIN_HISTORY), 193, "horizon"),
        (np.array(["a"] * MIN_HISTORY), 96, "finite numbers"),
    ],
)
def test_bad_history_is_refused(history, horizon, text):
    with pytest.raises(ForecastError, match=text):
        forecast(history, datetime(2026, 1, 1, tzinfo=UTC), horizon)


@pytest.mark.parametrize("horizon", [1, 96, MAX_HORIZON])
def test_min_history_is_exactly_what_ridge_needs(horizon):
    # callers choose ridge from MIN_HISTORY slots on: it must train there, for every horizon
    p = household_profile("prosumer", 3, START, MIN_HISTORY // 96 + 1)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    out = forecast(p.load_wh[:MIN_HISTORY], at, horizon, "ridge")
    assert out.shape == (horizon,)
    with pytest.raises(ForecastError, match="needs"):
        forecast(p.load_wh[:MIN_HISTORY - 1], at, horizon, "ridge")


def test_unknown_model_and_missing_prophet():
    hist = np.zeros(MIN_HISTORY)
    with pytest.raises(ForecastError, match="unknown model"):
        forecast(hist, datetime(2026, 1, 1, tzinfo=UTC), 4, "arima")  # type: ignore[arg-type]
    try:
        import prophet  # noqa: F401
    except ImportError:
        with pytest.raises(ForecastError, match="optional extra"):
            forecast(hist, datetime(2026, 1, 1, tzinfo=UTC), 4, "prophet")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), top=st.sampled_from([0, 1, 50, 5000, 10**9]),
       zeros=st.floats(0, 1), horizon=st.integers(1, 192), minute=st.sampled_from([0, 15, 45]))
def test_any_history_gives_a_non_negative_integer_forecast(seed, top, zeros, horizon, minute):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, top + 1, MIN_HISTORY + 96 * 15)
    values[rng.random(values.shape[0]) < zeros] = 0  # gaps, dead meters, nights
    out = forecast(values, datetime(2026, 5, 5, 6, minute, tzinfo=UTC), horizon)
    assert out.shape == (horizon,) and (out >= 0).all() and out.dtype == np.int64
