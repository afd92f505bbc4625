"""The import rules each folder's README states, checked against every module's imports.

Imports are read with ``ast`` from the source (not by importing it), every one of them: at the
top, inside functions (lazy imports) and under ``TYPE_CHECKING``, since each is a dependency a
reader follows. Only imports of the project's own packages are checked; what a folder says of
third-party libraries is left to its README.

``MAY_IMPORT`` mirrors the READMEs' "May import" lines: a module may import anything in its own
folder (subfolders included) and what the most specific entry naming it lists (a folder, or a
single module where a README makes an exception for one). Change a README, change this table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("firmware", "gateway", "hardware", "ledger", "ledger_client", "tools")

# What the firmware offers to CPython (firmware/README.md): the frame, and the modules that are
# CPython-clean for the tools; the package itself for its data files.
FIRMWARE_FOR_HOST = (
    "firmware.frame", "firmware.config", "firmware.cse7766", "firmware.pzem", "firmware.hal_host",
    "firmware.ble_guard",
)

GATEWAY = (  # gateway/README.md
    "firmware.frame",
    "firmware.ble_guard",
    "ledger.tx",
    "ledger.encoding",
    "ledger.contract",
    "ledger.fields",
    "ledger.keys",
    "ledger.secret_files",
    "ledger_client",
    "hardware.meters",
    "hardware.ble.profile",
    "hardware.ble.bleak_bumble",
    "hardware.ble.bonds",
)
LEDGER_PBFT = ("ledger.encoding", "ledger.fields", "ledger.ed25519", "ledger.tx",
               "ledger.contract.api")

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "firmware": (),  # firmware/README.md: nothing in firmware/ imports from outside it
    "gateway": GATEWAY,
    "gateway.bench": (*GATEWAY, "hardware.emulators"),  # hardware/emulators/README.md
    # gateway/ems/README.md: not the rest of gateway/ (the daemon's hooks are plain callables)
    # (ledger.contract.sealed: the one definition of a sealed order's commitment)
    # (ledger.argtypes: the argparse types every command line shares)
    "gateway.ems": ("firmware.frame", "ledger.contract.params", "ledger.contract.sealed",
                    "ledger.argtypes"),
    # gateway/sources/README.md
    "gateway.sources": ("gateway.clock", "gateway.config", "gateway.broker", "hardware.meters",
                        "hardware.ble.profile"),
    "hardware": ("firmware.frame", "ledger.argtypes"),  # hardware/README.md
    "hardware.meters": (),  # hardware/meters/README.md: the standard library
    "hardware.emulators": ("firmware.frame", "hardware.meters"),  # hardware/emulators/README.md
    # hardware/ble/README.md (ledger.secret_files: the one owner-only check of a secret file)
    "hardware.ble": ("firmware.frame", "firmware.ble_guard", "ledger.secret_files"),
    "hardware.boards": (),  # hardware/boards/README.md: imports nothing
    # ledger/README.md: never ledger_client, which is built on it
    "ledger": (),
    # ledger/contract/README.md (ledger.ed25519: the one signature check; ledger.fields: the
    # one family of field readers)
    "ledger.contract": ("ledger.encoding", "ledger.ed25519", "ledger.fields"),
    "ledger.pbft": LEDGER_PBFT,  # ledger/pbft/README.md
    "ledger_client": ("ledger.tx", "ledger.encoding", "ledger.cluster", "ledger.framing",
                      "ledger.limits", "ledger.client_wire", "ledger.tasks",
                      "ledger.contract.api"),  # ledger_client/README.md
    # tools/README.md: every part of the project, from the top (nothing imports tools)
    "tools": ("firmware", "gateway", "hardware", "ledger", "ledger_client"),
}

# "May be imported by": folders only some others may import (their own modules aside).
IMPORTED_ONLY_BY: dict[str, tuple[str, ...]] = {
    "tools": (),  # tools/README.md: nothing in the project imports tools/
    "tools.demo": ("tools.cli",),  # tools/demo/README.md
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if "node_modules" not in p.parts
    }


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` is (or is inside: ``pkg.module.attribute``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_only(tree: ast.AST) -> set[int]:
    """The ids of the import nodes under ``if TYPE_CHECKING:``: they name a type for the
    checker and load nothing at run time."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }


def _imports(path: Path, *, type_only: bool = True) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a project module in ``path``, once each; with
    ``type_only=False``, not those under ``if TYPE_CHECKING:``."""
    seen: set[tuple[int, str]] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = set() if type_only else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.split(".")[0] in PACKAGES else None
            if target is not None and (node.lineno, target) not in seen:
                seen.add((node.lineno, target))
                yield node.lineno, target


# The run-time graph: a module the checker alone reads (a part of the PBFT core naming the
# ``Replica`` it belongs to as a type) is no load-order dependency. The folder rules above
# still count such imports.
GRAPH = {
    m: {t for _, t in _imports(p, type_only=False) if t != m} for m, p in MODULES.items()
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule(table: dict[str, tuple[str, ...]], module: str) -> str | None:
    keys = [k for k in table if _within(module, k)]
    return max(keys, key=len) if keys else None


def _home(module: str) -> str:
    """The folder (package) whose rule covers ``module``: a module-named entry belongs to its
    folder, so it may import that folder too."""
    folders = [k for k in MAY_IMPORT if _within(module, k) and _is_folder(k)]
    return max(folders, key=len)


def _is_folder(name: str) -> bool:
    return (ROOT / name.replace(".", "/")).is_dir()


def _allowed(module: str, target: str) -> bool:
    rule = _rule(MAY_IMPORT, module)
    assert rule is not None, f"{module}: no import rule names it"
    home = _home(module)
    if not (_within(target, home) or any(_within(target, p) for p in MAY_IMPORT[rule])):
        return False
    if _within(target, "firmware") and not _within(module, "firmware"):
        # firmware/README.md: what the firmware offers to CPython, and its data files
        return target == "firmware" or any(_within(target, p) for p in FIRMWARE_FOR_HOST)
    guard = _rule(IMPORTED_ONLY_BY, target)
    return guard is None or _within(module, guard) or any(
        _within(module, p) for p in IMPORTED_ONLY_BY[guard]
    )


def _violations() -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
        for module, path in MODULES.items()
        for line, target in _imports(path)
        if not _allowed(module, target)
    ]


def test_every_module_imports_only_what_its_folder_readme_allows() -> None:
    found = _violations()
    assert not found, "imports against a README's rule:\n" + "\n".join(found)


def test_the_ledger_does_not_import_its_client() -> None:
    # ledger_client is built on ledger (tx, encoding, transport): an import back up is a
    # circle between the two folders
    back_up = sorted(
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if _within(m, "ledger")
        for t in targets
        if _within(t, "ledger_client")
    )
    assert not back_up, "\n".join(back_up)


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(GRAPH):
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_modules() -> None:
    assert _cycles() == []


def test_the_checker_sees_a_circle_and_a_forbidden_import() -> None:
    # the checks above cannot pass by seeing nothing
    assert len(MODULES) > 100 and sum(map(len, GRAPH.values())) > 300
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["gateway.clock"].add("gateway.daemon")  # daemon -> clock already
        assert any({"gateway.clock", "gateway.daemon"} <= set(c) for c in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
    assert _rule(MAY_IMPORT, "gateway.ems.agent") == "gateway.ems"
    assert not any(_within("gateway.config", p) for p in MAY_IMPORT["gateway.ems"])
