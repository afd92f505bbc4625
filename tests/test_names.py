"""A name means one thing across the project: classes of the gateway, the tools and the hardware
share no name with another class anywhere in the project, and no two of their modules are
called ``cli.py``. (The ledger's own names are held by its tests; the firmware's HAL pairs,
``hal_host.Adc`` and ``hal_esp32.Adc``, are one interface on purpose.)"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("firmware", "gateway", "hardware", "ledger", "ledger_client", "tools")
MINE = ("gateway", "hardware", "tools")


def _classes() -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    where[node.name].append(str(path.relative_to(ROOT)))
    return where


def test_classes_of_gateway_tools_and_hardware_have_names_of_their_own() -> None:
    twice = {
        name: paths
        for name, paths in _classes().items()
        if len(paths) > 1 and any(p.startswith(MINE) for p in paths)
    }
    assert not twice, f"one class name, several classes: {twice}"


def test_one_cli_module_in_gateway_tools_and_hardware() -> None:
    clis = sorted(str(p.relative_to(ROOT)) for part in MINE for p in (ROOT / part).rglob("cli.py"))
    assert clis == ["tools/cli.py"]  # the wattmesh entry point; the others say what they hold
