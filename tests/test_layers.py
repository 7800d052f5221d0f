"""The package's folders are its layers, and imports only run downwards.

errors <- framing <- protocol <- client <- tools (server, compat; proxy,
soak; bench; cli).  Each module may import from its own folder and from
the layers below it, never from a layer above or beside it; the root
modules (``qmpcore``, the ``aio``/``sync``/``fleet`` aliases, ``__main__``)
are the public surface and may import any layer.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.tooling

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "src" / "qmpcore"

#: Layer ranks: a module may import from a lower rank or its own folder.
RANK = {
    "errors": 0,
    "framing": 1,
    "protocol": 2,
    "client": 3,
    "typed": 3,
    "server": 4,
    "compat": 4,
    "proxy": 5,
    "soak": 5,
    "bench": 6,
    "cli": 7,
}
SURFACE = {"__init__", "__main__", "aio", "sync", "fleet"}


def _module_name(path: pathlib.Path) -> tuple[str, str]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
    return module, package


def _imports(path: pathlib.Path) -> set[str]:
    module, package = _module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found.update([target] if node.module else [f"{target}.{a.name}" for a in node.names])
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "qmpcore" or name.startswith("qmpcore.")}


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_folder_is_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(RANK), f"add the new folder(s) to RANK: {folders - set(RANK)}"


def test_imports_only_run_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, _ = _module_name(path)
        layer = _layer(module)
        if layer is None or layer in SURFACE:
            continue
        for target in sorted(_imports(path)):
            to = _layer(target)
            if target == "qmpcore.__version__":  # the one root name below the surface may read
                continue
            if to is None:
                if target != "qmpcore":
                    wrong.append(f"{module} -> {target}")
                continue
            if to in SURFACE or to not in RANK or (to != layer and RANK[to] >= RANK[layer]):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that run up or across the layers:\n" + "\n".join(wrong)
