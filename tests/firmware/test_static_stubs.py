"""Static check of the firmware against the micropython-esp32 stubs (mypy, untyped defs checked).

The firmware is MicroPython code, so CPython's typeshed is the wrong reference: mypy runs with the
stubs' own stdlib (micropython-stdlib-stubs) as its typeshed and the ESP32 board stubs (machine,
time, bluetooth, network, umqtt...) first on its path. Errors inside the stub files themselves are
not ours and are silenced module by module; every error in a firmware module fails the test.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

import firmware

FIRMWARE = Path(firmware.__file__).parent
# Installed on the device by `wattmesh firmware flash` (mpremote mip install); no stubs exist.
NO_STUBS = ("aioble",)


def _copy_dist(dist: str, dest: Path, top: set[str]) -> None:
    d = md.distribution(dist)
    for f in d.files or []:
        name = str(f)
        if name.endswith(".pyi") and not name.startswith(("stdlib/", "stubs/")):
            src = Path(str(d.locate_file(f)))
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
            top.add(name.split("/")[0].removesuffix(".pyi"))


def test_firmware_type_checks_against_the_esp32_stubs(tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    src = tmp_path / "src"
    stubs.mkdir()
    src.mkdir()
    top: set[str] = set()
    _copy_dist("micropython-esp32-stubs", stubs, top)
    _copy_dist("micropython-stdlib-stubs", stubs, top)
    typeshed = Path(str(md.distribution("micropython-stdlib-stubs").locate_file("stdlib"))).parent
    assert (typeshed / "stdlib" / "VERSIONS").is_file()
    modules = sorted(p.name for p in FIRMWARE.glob("*.py") if p.name != "__init__.py")
    for name in modules:
        shutil.copy(FIRMWARE / name, src / name)
    silenced = ",".join(sorted(m + "," + m + ".*" for m in top))
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\ncheck_untyped_defs = True\n"
        f"[mypy-{silenced}]\nignore_errors = True\n"
        f"[mypy-{','.join(NO_STUBS)}]\nignore_missing_imports = True\n"
    )
    proc = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
            "--custom-typeshed-dir", str(typeshed), "--no-site-packages",
            "--cache-dir", str(tmp_path / "cache"), *modules,
        ],
        cwd=src,
        env={"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"no issues found in {len(modules)} source files" in proc.stdout
    assert "machine" in top and "bluetooth" in top and "umqtt" in top
