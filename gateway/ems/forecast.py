"""Forecasts of household load and PV, 15-minute steps, 24 to 48 hours ahead, from the gateway's
own interval history; and the backtest that scores them.

Two models:

* ``seasonal_naive``: each slot as the same slot one day (or one week) earlier.
* ``ridge``: a ridge regression on lagged and calendar features. The usual library for this
  (statsforecast) pulls numba, too heavy for a Raspberry Pi; Prophet is offered as an optional
  extra (``pip install wattmesh[prophet]``, ``model="prophet"``). A linear model on lags and
  calendar terms is a standard strong day-ahead baseline, trains in milliseconds with numpy and
  cannot diverge. Features of a target slot: the same slot on the latest day known when the
  forecast is made, the same slot one week earlier, the mean and the maximum of that slot over
  the last seven known days (the maximum is a clear-sky envelope for PV), the level of the last
  known day, and time-of-day harmonics, separately for weekdays and weekends.

History arrays hold one integer Wh per slot, the last element being the slot just before the
forecast starts. Missing slots are the caller's to fill (the gateway flags gaps).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from gateway.ems.timegrid import SLOT_MIN, SLOTS_PER_DAY

Model = Literal["naive", "naive_week", "ridge", "prophet"]
MODELS: tuple[Model, ...] = ("naive", "naive_week", "ridge", "prophet")
WEEK = 7 * SLOTS_PER_DAY
MAX_HORIZON = 2 * SLOTS_PER_DAY
# The ridge model trains on daily origins that each have two weeks of history behind them and a
# whole horizon after them: two weeks plus the longest horizon is the least that trains it for
# every horizon it accepts (callers pick the seasonal-naive model below that).
MIN_HISTORY = 2 * WEEK + MAX_HORIZON
HARMONICS = 3

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ForecastError(ValueError):
    """History too short or malformed, or an unknown model; the message says which."""


def _validate(history: npt.ArrayLike, horizon: int, need: int) -> FloatArray:
    arr = np.asarray(history)
    if arr.ndim != 1:
        raise ForecastError("history must be a 1-D array of slot energies")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ForecastError("history must hold finite numbers")
    if (arr < 0).any():
        raise ForecastError("history holds negative energies")
    if not 1 <= horizon <= MAX_HORIZON:
        raise ForecastError(f"horizon must be 1..{MAX_HORIZON} slots, got {horizon}")
    if arr.shape[0] < need:
        raise ForecastError(f"history has {arr.shape[0]} slots, the model needs {need}")
    return arr.astype(np.float64)


def seasonal_naive(history: npt.ArrayLike, horizon: int, season: int = SLOTS_PER_DAY) -> IntArray:
    """Each future slot equals the same slot ``season`` slots earlier (the last season again)."""
    y = _validate(history, horizon, season)
    last = y[-season:]
    out: FloatArray = last[np.arange(horizon) % season]
    return np.rint(out).astype(np.int64)


def _features(y: FloatArray, origin: int, horizon: int, start: datetime) -> FloatArray:
    """Feature rows for targets origin..origin+horizon-1 of series ``y`` (known up to origin)."""
    k = np.arange(horizon)
    target = origin + k
    back = (k // SLOTS_PER_DAY + 1) * SLOTS_PER_DAY  # latest known day at the same time of day
    lag_day = y[target - back]
    lag_week = y[target - WEEK]
    same = np.stack([y[target - back - SLOTS_PER_DAY * j] for j in range(7)])
    tod = (start.hour * 60 + start.minute) // SLOT_MIN
    slot = (tod + k) % SLOTS_PER_DAY
    day_offset = (tod + k) // SLOTS_PER_DAY
    weekday = np.array([(start + timedelta(days=int(d))).weekday() for d in day_offset])
    weekend = (weekday >= 5).astype(np.float64)
    angle = 2 * np.pi * slot / SLOTS_PER_DAY
    level = np.full(horizon, y[origin - SLOTS_PER_DAY:origin].mean())
    envelope = same.max(axis=0)
    # the envelope scaled by how the last known day compared with the best of the week: for PV,
    # yesterday's clearness applied to a clear-sky shape, free of yesterday's passing clouds
    days = y[origin - 7 * SLOTS_PER_DAY:origin].reshape(7, SLOTS_PER_DAY).sum(axis=1)
    ratio = days[-1] / days.max() if days.max() > 0 else 0.0
    cols = [np.ones(horizon), lag_day, lag_week, same.mean(axis=0), envelope, level,
            envelope * ratio]
    for h in range(1, HARMONICS + 1):
        for wave in (np.sin(h * angle), np.cos(h * angle)):
            cols.append(wave)
            cols.append(wave * weekend)
    cols.append(weekend)
    return np.column_stack(cols)


@dataclass(frozen=True, slots=True)
class RidgeModel:
    coef: FloatArray
    scale: FloatArray
    nonneg_envelope: bool  # a slot whose 7-day maximum is 0 stays 0 (PV at night)

    def predict(self, history: npt.ArrayLike, start: datetime, horizon: int) -> IntArray:
        y = _validate(history, horizon, MIN_HISTORY)
        x = _features(y, y.shape[0], horizon, start)
        pred = (x / self.scale) @ self.coef
        if self.nonneg_envelope:
            pred = np.where(x[:, 4] <= 0, 0.0, pred)
        return np.rint(np.clip(pred, 0, None)).astype(np.int64)


def fit_ridge(history: npt.ArrayLike, end: datetime, *, horizon: int = SLOTS_PER_DAY,
              train_days: int = 42, alpha: float = 1.0) -> RidgeModel:
    """Fit on daily origins over the last ``train_days`` days of history, which ends at ``end``
    (the start of the slot after the last one held)."""
    y = _validate(history, horizon, MIN_HISTORY)
    rows: list[FloatArray] = []
    targets: list[FloatArray] = []
    n = y.shape[0]
    for d in range(1, train_days + 1):
        origin = n - d * SLOTS_PER_DAY
        if origin - 2 * WEEK < 0 or origin + horizon > n:
            continue
        start = end - timedelta(minutes=SLOT_MIN * (n - origin))
        rows.append(_features(y, origin, horizon, start))
        targets.append(y[origin:origin + horizon])
    if not rows:
        # reachable only with ``train_days`` shorter than the horizon: the history is long enough
        raise ForecastError(f"no training day among the last {train_days} has two weeks of "
                            f"history before it and {horizon} slots after it")
    x = np.concatenate(rows)
    t = np.concatenate(targets)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-9)
    xs = x / scale
    gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
    coef = np.linalg.solve(gram, xs.T @ t)
    return RidgeModel(coef=coef, scale=scale, nonneg_envelope=bool((t >= 0).all()))


def forecast(history: npt.ArrayLike, start: datetime, horizon: int = SLOTS_PER_DAY,
             model: Model = "ridge") -> IntArray:
    """Forecast ``horizon`` slots from ``start`` given the history that ends at ``start``."""
    if model == "naive":
        return seasonal_naive(history, horizon)
    if model == "naive_week":
        return seasonal_naive(history, horizon, WEEK)
    if model == "ridge":
        return fit_ridge(history, start, horizon=horizon).predict(history, start, horizon)
    if model == "prophet":
        return _prophet(history, start, horizon)
    raise ForecastError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def _prophet(history: npt.ArrayLike, start: datetime, horizon: int) -> IntArray:
    try:
        import pandas as pd
        from prophet import Prophet
    except ImportError as exc:
        raise ForecastError("model 'prophet' needs the optional extra: "
                            "pip install 'wattmesh[prophet]'") from exc
    y = _validate(history, horizon, 2 * SLOTS_PER_DAY)
    n = y.shape[0]
    stamps = [start - timedelta(minutes=SLOT_MIN * (n - i)) for i in range(n)]
    frame = pd.DataFrame({"ds": [s.replace(tzinfo=None) for s in stamps], "y": y})
    m = Prophet(daily_seasonality=True, weekly_seasonality=True, yearly_seasonality=False)
    m.fit(frame)
    future = m.make_future_dataframe(periods=horizon, freq=f"{SLOT_MIN}min",
                                     include_history=False)
    pred: FloatArray = np.asarray(m.predict(future)["yhat"].to_numpy(), dtype=np.float64)
    return np.rint(np.clip(pred, 0, None)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Score:
    mae_wh: float
    nmae: float  # MAE divided by the mean of the actual values

    def as_dict(self) -> dict[str, float]:
        return {"mae_wh": round(self.mae_wh, 3), "nmae": round(self.nmae, 4)}


def backtest(series: npt.ArrayLike, first: datetime, *, horizon: int = SLOTS_PER_DAY,
             warmup_days: int = 28, refit_days: int = 7,
             models: tuple[Model, ...] = ("naive", "ridge")) -> dict[str, Score]:
    """Forecast every day at midnight after a warm-up, refitting the ridge weekly; score each
    model over the same held-out targets (never seen by the fit that forecast them)."""
    y = _validate(series, 1, 1)
    days = y.shape[0] // SLOTS_PER_DAY
    errors: dict[str, list[float]] = {m: [] for m in models}
    actual_sum = 0.0
    count = 0
    ridge: RidgeModel | None = None
    for d in range(warmup_days, days):
        origin = d * SLOTS_PER_DAY
        if origin + horizon > y.shape[0]:
            break
        start = first + timedelta(days=d)
        hist = y[:origin]
        actual = y[origin:origin + horizon]
        actual_sum += float(actual.sum())
        count += horizon
        for m in models:
            if m == "ridge":
                if ridge is None or (d - warmup_days) % refit_days == 0:
                    ridge = fit_ridge(hist, start, horizon=horizon)
                pred = ridge.predict(hist, start, horizon)
            else:
                pred = forecast(hist, start, horizon, m)
            errors[m].append(float(np.abs(pred - actual).sum()))
    if count == 0:
        raise ForecastError("series too short for a backtest")
    mean = actual_sum / count
    return {m: Score(mae_wh=sum(e) / count, nmae=(sum(e) / count) / mean if mean else 0.0)
            for m, e in errors.items()}
