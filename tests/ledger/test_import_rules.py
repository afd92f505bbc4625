"""The import rules ledger/README.md and ledger/pbft/README.md state, read from the code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PBFT_MAY_IMPORT = ("ledger.pbft", "ledger.encoding", "ledger.fields", "ledger.ed25519", "ledger.tx")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_ledger_never_imports_the_client_built_on_it() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "ledger").rglob("*.py")
        for name in _imports(path)
        if name == "ledger_client" or name.startswith("ledger_client.")
    }
    assert not found


def test_the_consensus_core_imports_only_what_its_readme_allows() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "ledger" / "pbft").glob("*.py")
        for name in _imports(path)
        if name.startswith("ledger.") and not name.startswith(PBFT_MAY_IMPORT)
    }
    assert not found
