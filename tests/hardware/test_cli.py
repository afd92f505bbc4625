"""``wattmesh emulate meter|node``: malformed arguments get one clear line and exit code 2, before
any server starts (never a traceback)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.cli import build_parser, main

KEY = "ab" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _meter(*extra: str) -> list[str]:
    return ["emulate", "meter", "--model", "sdm120", *extra]


# Where a bad argument is expected to stop the command first: the port is busy and the serial
# path missing, so a check that let the bad value through fails at once instead of serving.
BUSY = "127.0.0.1:{busy}"
NO_TTY = "/nonexistent-wattmesh-test/tty"
NODE = ["emulate", "node", "--node-id", "1", "--key", KEY, "--mqtt", "127.0.0.1:1"]  # no broker


def _one_clear_line(err: str, *words: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no error message"
    for word in words:
        assert word in lines[-1], (word, lines[-1])


def test_a_port_in_use_is_refused_with_its_reason(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_meter("--tcp", f"127.0.0.1:{busy_port}")) == 2
    _one_clear_line(capsys.readouterr().err, "--tcp", f"127.0.0.1:{busy_port}", "in use")


@pytest.mark.parametrize(
    "host",
    [
        "192.0.2.1",  # TEST-NET-1: an address of no host here
        "no such host.invalid",
    ],
)
def test_an_address_not_of_this_host_is_refused(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_meter("--tcp", f"{host}:{_free_port()}")) == 2
    _one_clear_line(capsys.readouterr().err, "--tcp", host)


def test_a_missing_or_non_serial_port_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_meter("--serial", str(tmp_path / "ttyNOPE"))) == 2
    _one_clear_line(capsys.readouterr().err, "--serial", "ttyNOPE")
    regular = tmp_path / "plain-file"
    regular.write_text("not a tty\n")
    assert main(_meter("--serial", str(regular))) == 2
    _one_clear_line(capsys.readouterr().err, "--serial", "not a serial port")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (_meter("--tcp", BUSY, "--import-kwh", "inf"), "--import-kwh"),
        (_meter("--tcp", BUSY, "--import-kwh=-inf"), "--import-kwh"),
        (_meter("--tcp", BUSY, "--import-kwh", "nan"), "--import-kwh"),
        (_meter("--tcp", BUSY, "--import-kwh", "1e300"), "--import-kwh"),
        (_meter("--tcp", BUSY, "--import-kwh", "-1"), "--import-kwh"),
        (_meter("--tcp", BUSY, "--fault-rate", "nan"), "--fault-rate"),
        (_meter("--tcp", BUSY, "--fault-rate", "2"), "--fault-rate"),
        (_meter("--serial", NO_TTY, "--baudrate", "0"), "--baudrate"),
        (_meter("--serial", NO_TTY, "--baudrate", "-9600"), "--baudrate"),
        ([*NODE, "--period", "inf"], "--period"),
        ([*NODE, "--period", "nan"], "--period"),
        ([*NODE, "--seq", "-5"], "--seq"),
        ([*NODE, "--seq", str(2**32)], "--seq"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(
    argv: list[str], flag: str, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([a.format(busy=busy_port) for a in argv])
    assert exit_.value.code == 2
    _one_clear_line(capsys.readouterr().err, flag)


@pytest.mark.parametrize("watts", ["inf", "-inf", "nan", "1e300", "-2e6"])
@pytest.mark.parametrize(
    "argv",
    [
        _meter("--tcp", BUSY),
        NODE,
    ],
)
def test_a_constant_profile_must_be_a_finite_wattage(
    argv: list[str], watts: str, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Accepted before, these failed later inside the emulator (int(nan), a frame field overflow).
    argv = [a.format(busy=busy_port) for a in argv]
    assert main([*argv, "--profile", f"constant:{watts}"]) == 2
    _one_clear_line(capsys.readouterr().err, "--profile", "finite")


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["--import-kwh", "--fault-rate"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30)),
)
def test_float_arguments_accept_only_finite_numbers_in_range(flag: str, value: float) -> None:
    parser = build_parser()
    argv = _meter("--tcp", "127.0.0.1:1502", f"{flag}={value!r}")  # parsed only, never served
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        return
    parsed = getattr(args, flag[2:].replace("-", "_"))
    assert math.isfinite(parsed)
    assert 0 <= parsed <= (1 if flag == "--fault-rate" else 1e9)


def test_a_line_speed_the_model_does_not_have_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An SDM120 cannot be set to 19200 baud: the emulator would sit on the line and never
    answer; the command says so instead of starting."""
    assert main(_meter("--serial", "pty", "--baudrate", "19200")) == 2
    _one_clear_line(capsys.readouterr().err, "--baudrate 19200", "1200, 2400, 4800, 9600")
