"""`wattmesh bench firmware` refuses counts outside its range with a clear error."""

from __future__ import annotations

import pytest

from tools.cli import main


@pytest.mark.parametrize("args", [["--windows", "0"], ["--steps", "-3"], ["--steps", "x"]])
def test_bad_counts_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "firmware", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err or "--windows" in err
