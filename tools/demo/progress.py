"""What the person running the demo sees: a progress bar on stderr and one line per hour.

Plain text on purpose (no terminal library): the bar redraws itself with a carriage return when
stderr is a terminal and is left out otherwise, so logs and CI output stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 28


def kwh(wh: int | None) -> str:
    return "      -" if wh is None else f"{wh / 1000:7.2f}"


def price(micro_per_kwh: int | None) -> str:
    if micro_per_kwh is None:
        return "     -"
    return f"{micro_per_kwh / 1_000_000:.4f}"


class ProgressBar:
    def __init__(self, total_steps: int, *, out: TextIO | None = None, err: TextIO | None = None,
                 quiet: bool = False) -> None:
        self.total = max(1, total_steps)
        self.done = 0
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar = not quiet and self.err.isatty()
        self.started = time.monotonic()
        self.status = ""

    def say(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)
        self._draw()

    def header(self) -> None:
        self.say(f"{'hour':<16}  {'offers':>6} {'bids':>6}   {'MCP €/kWh':>9}   "
                 f"{'traded kWh':>10}   {'grid import kWh':>15}   {'grid export kWh':>15}")
        self.say("(grid import/export: what the grid sold to and bought from the homes, as the "
                 "ledger settled the hour; - until it is settled)")

    def hour_line(self, label: str, offers: int, bids: int, mcp: int | None, traded_wh: int,
                  import_wh: int | None, export_wh: int | None, note: str = "") -> None:
        line = (f"{label:<16}  {offers:6d} {bids:6d}   {price(mcp):>9}   {kwh(traded_wh):>10}"
                f"   {kwh(import_wh):>15}   {kwh(export_wh):>15}")
        if note:
            line += f"   {note}"
        self.say(line)

    def step(self, status: str = "") -> None:
        self.done = min(self.total, self.done + 1)
        self.status = status or self.status
        self._draw()

    def set_status(self, status: str) -> None:
        self.status = status
        self._draw()

    def finish(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.bar:
            self.err.write("\r\x1b[2K")
            self.err.flush()

    def _draw(self) -> None:
        if not self.bar:
            return
        frac = self.done / self.total
        filled = int(frac * BAR_WIDTH)
        elapsed = time.monotonic() - self.started
        self.err.write(
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac * 100:5.1f}%  "
            f"{elapsed:5.0f} s  {self.status[:60]}"
        )
        self.err.flush()
