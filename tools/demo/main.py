"""Start the demo, run it, write the report, say how it went; stop everything on the way out."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from tools.demo.options import DemoOptions
from tools.demo.procs import Supervisor
from tools.demo.progress import ProgressBar
from tools.demo.record import DayRecord
from tools.demo.registration import DemoError
from tools.demo.run import DemoRun


def _eur(utok: int) -> str:
    return f"{utok / 1_000_000:.2f} €"


def run_demo(opts: DemoOptions) -> int:
    if opts.out is not None:  # make the output directory before the run, not after it
        try:
            opts.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"wattmesh demo: --out: cannot create {opts.out} ({exc})", file=sys.stderr)
            return 2
    progress = ProgressBar(opts.hours, quiet=opts.quiet)
    progress.say(
        f"wattmesh demo: {opts.households} homes, {opts.hours} h from {opts.date}, "
        f"clearing rule {opts.rule}{', with faults' if opts.faults else ''}"
    )

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: left to asyncio.run, Ctrl-C only cancels the main task, and a library that
    # turns a cancellation into its own error (aiomqtt can) lets the day run on to the end.
    # Raised here, KeyboardInterrupt leaves the event loop whatever a task catches.
    old = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.signal(signal.SIGINT, on_term)
    try:
        with tempfile.TemporaryDirectory(prefix="wattmesh-demo-") as tmp:
            sup = Supervisor(Path(tmp) / "logs")
            _log_to_file(Path(tmp) / "logs" / "demo.log")
            tmp_logs = Path(tmp) / "logs"
            try:
                run = DemoRun(opts, progress, sup, Path(tmp))
                record = asyncio.run(run.run())
            except (DemoError, RuntimeError, OSError) as exc:
                progress.finish()
                print(f"wattmesh demo: {exc}", file=sys.stderr)
                _tail_logs(sup)
                return 1
            finally:
                sup.close()
                if opts.out is not None:  # keep the logs of every part next to the report
                    shutil.copytree(tmp_logs, opts.out / "logs", dirs_exist_ok=True)
            progress.finish()
            return _finish(opts, run, record, Path(tmp))
    except KeyboardInterrupt:
        progress.finish()
        print("wattmesh demo: interrupted; everything it started has been stopped",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


def _finish(opts: DemoOptions, run: DemoRun, record: DayRecord, _tmp: Path) -> int:
    from tools.demo.report import summary, write_report

    data = write_report(opts.out, record, run.tariffs) if opts.out else summary(record,
                                                                               run.tariffs)
    costs = data["cost_comparison"]
    t = data["totals"]
    say = print
    say("")
    say(f"traded in the community: {t['traded_wh'] / 1000:.1f} kWh; billed by the grid: import "
        f"{t['grid_import_wh'] / 1000:.1f} kWh, export {t['grid_export_wh'] / 1000:.1f} kWh "
        f"(the community's net flow: import {t['net_import_wh'] / 1000:.1f} kWh, export "
        f"{t['net_export_wh'] / 1000:.1f} kWh)")
    say(f"cost of the day at grid tariffs alone: {_eur(costs['grid_only']['community_cost_utok'])}")
    for rule in (r for r in costs if r != "grid_only"):
        c = costs[rule]
        mark = "  (this run)" if rule == opts.rule else ""
        efficiency = c.get("efficiency")
        traded = "" if efficiency is None else f"  efficiency {efficiency:.2f}"
        say(f"  with the community market, rule {rule:<10}: {_eur(c['community_cost_utok'])}"
            f"  saving {_eur(c['saving_utok'])} ({c['saving_pct']}%){traded}{mark}")
    for f in record.faults:
        say(f"fault at {f.sim_time}: {f.kind}: {f.detail}. {f.recovered}")
    say("self-checks:")
    for c in record.checks:
        say(f"  [{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}")
    if opts.out:
        say(f"report: {opts.out / 'report.html'}   figures: {opts.out / 'summary.json'}")
    say(f"done in {record.timings.get('run_s', 0):.0f} s: "
        + ("all self-checks passed" if record.ok else "SOME SELF-CHECKS FAILED"))
    return 0 if record.ok else 1


def _tail_logs(sup: Supervisor, lines: int = 5) -> None:
    """The last lines of each child's log, so a failure that happened in a child is visible."""
    for child in sup.children.values():
        try:
            text = child.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in text[-lines:]:
            print(f"  [{child.name}] {line}", file=sys.stderr)


def _log_to_file(path: Path) -> None:
    """The parts log what they do (an outbox retry, a reconnect): into the run's log file, not
    over the progress bar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
