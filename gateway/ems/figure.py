"""The paper's Figure 8 for one plan: household load before (uncontrolled) and after the EMS."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gateway.ems.greedy import baseline
from gateway.ems.problem import PlanInput, Schedule, job_load
from gateway.ems.timegrid import MWH_PER_W_SLOT, SLOT_MIN


def plot_day(inp: PlanInput, plan: Schedule, path: str | Path, title: str,
             peak_hours: tuple[int, int] | None = None) -> None:
    hours = np.arange(inp.n + 1) * SLOT_MIN / 60
    kw = 1 / (MWH_PER_W_SLOT * 1000)

    def series(mwh: np.ndarray) -> np.ndarray:
        return np.append(mwh, mwh[-1]) * kw

    before = inp.base_mwh + job_load(inp, baseline(inp))
    after = inp.base_mwh + job_load(inp, plan)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    if peak_hours is not None:
        ax.axvspan(peak_hours[0], peak_hours[1], color="0.92", label="peak tariff")
    ax.fill_between(hours, series(inp.pv_mwh), step="post", color="gold", alpha=0.45,
                    label="PV forecast")
    ax.step(hours, series(before), where="post", color="tab:red", lw=1.4,
            label=f"before EMS (peak {before.max() * kw:.2f} kW)")
    ax.step(hours, series(after), where="post", color="tab:blue", lw=1.8,
            label=f"after EMS (peak {after.max() * kw:.2f} kW)")
    limit = inp.limit_mwh * kw
    ax.step(hours, np.append(limit, limit[-1]), where="post", color="0.3", ls="--", lw=1,
            label="import limit")
    ax.set_xlim(0, inp.n * SLOT_MIN / 60)
    ax.set_xticks(range(0, 25, 2))
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("household load (kW)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
