"""Malformed arguments across the `wattmesh` commands: one clear line naming the argument, a
non-zero exit code, never a traceback, and nothing started or written before the check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import build_parser, main
from tools.demo import main as demo_main
from tools.demo.options import OptionError, parse_options

ROOT = Path(__file__).resolve().parents[1]
WATTMESH = [sys.executable, "-m", "tools.cli"]


def _no_run(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the demo run started although --out cannot be a directory")


@pytest.mark.parametrize("sub", ["x", "x/y"])
def test_demo_refuses_an_out_dir_it_cannot_create_before_the_run(
    tmp_path: Path, sub: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("a file\n")
    out = plain / sub
    monkeypatch.setattr(demo_main, "run_demo", _no_run)
    monkeypatch.setattr(demo_main, "DemoRun", _no_run)
    assert main(["demo", "--hours", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--out" in err and "not a directory" in err
    with pytest.raises(OptionError, match="--out"):
        parse_options(build_parser().parse_args(["demo", "--out", str(out)]))


def test_run_demo_makes_the_out_dir_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory that passed the options check but cannot be made when the run begins (here:
    # a file appeared in its place) stops the demo before it starts, not after its whole run.
    opts = parse_options(build_parser().parse_args(["demo", "--hours", "1", "--quiet",
                                                    "--out", str(tmp_path / "out" / "day")]))
    (tmp_path / "out").write_text("appeared meanwhile\n")
    monkeypatch.setattr(demo_main, "DemoRun", _no_run)
    assert demo_main.run_demo(opts) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--out" in err


def test_the_audited_commands_fail_with_one_line_through_the_real_command(
    tmp_path: Path, busy_port: int
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("a file\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"files": [1]}))
    meter = ["emulate", "meter", "--model", "sdm120"]
    cases = [
        ([*meter, "--tcp", f"127.0.0.1:{busy_port}"], 2, "--tcp"),
        ([*meter, "--tcp", f"192.0.2.1:{busy_port}"], 2, "--tcp"),
        ([*meter, "--serial", str(tmp_path / "no-tty")], 2, "--serial"),
        ([*meter, "--tcp", f"127.0.0.1:{busy_port}", "--import-kwh", "inf"], 2, "--import-kwh"),
        (["firmware", "flash", "--port", "p", "--dry-run", "--bundle", str(bundle),
          "--node", str(tmp_path / "n")], 2, "files[0]"),
        (["provision", "node", "--id", "1", "--keystore", str(tmp_path / "k.json"),
          "--out", str(plain)], 2, "--out"),
        (["firmware", "build", "--out", str(plain)], 2, "--out"),
        (["demo", "--out", str(plain / "x")], 2, "--out"),
    ]
    for argv, code, word in cases:
        proc = subprocess.run([*WATTMESH, *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == code, (argv, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (argv, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert word in last, (argv, last)
    assert plain.read_text() == "a file\n" and not (tmp_path / "k.json").exists()
