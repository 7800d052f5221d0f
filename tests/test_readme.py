"""The README's Python examples type-check, and the ones that need no more
than QMP monitors run, against the embedded server.

Each ```python block of README.md is a program of its own: mypy checks
every one under ``--strict`` (reading the checkout's package as if
installed, as ``tests/test_typing.py`` does).  The blocks that talk to
``/run/vmN/qmp.sock`` and nothing else run with those paths pointing at
simulated VMs; the framer's and the schema's, which need no VM, run as
they are.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
# The examples' monitors: /run/vm1/qmp.sock, /run/vm2/qmp.sock, ...
_MONITOR = re.compile(r"/run/vm(\d+)/qmp\.sock")
# What the simulated VMs cannot stand in for: TLS, the proxy's sockets,
# devices and block nodes, QEMU's own tools.
_NEEDS_MORE = ("ssl", "Proxy", "device_del", "blockdev_add", "importlib")


def _blocks() -> list[str]:
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def _monitors(block: str) -> int | None:
    """How many simulated VMs a block needs to run (None: not runnable here).

    Runnable: it opens only the examples' QMP monitors (no other file or
    socket; no monitor at all for the framer's and the schema's examples),
    and needs nothing the simulator lacks.
    """
    if any(word in block for word in _NEEDS_MORE) or "serve_vm" in block:
        return None
    paths = set(re.findall(r'"(/[^"]*)"', block))
    numbers = [int(m.group(1)) for path in paths if (m := _MONITOR.fullmatch(path))]
    if len(numbers) != len(paths) or ("connect" in block) != bool(numbers):
        return None
    return max(numbers, default=0)


def test_the_readme_has_python_examples() -> None:
    blocks = _blocks()
    assert len(blocks) >= 10
    assert sum(1 for block in blocks if _monitors(block)) >= 3  # a VM or more


@pytest.mark.tooling
def test_readme_examples_type_check(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy")
    files = []
    for number, block in enumerate(_blocks()):
        path = tmp_path / f"readme_example_{number}.py"
        path.write_text(block, encoding="utf-8")
        files.append(str(path))
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nmypy_path = {REPO / 'src'}\n\n[mypy-qmpcore.*]\nignore_errors = True\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "--config-file", str(config), *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MYPYPATH": str(REPO / "src")},
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("number", [n for n, block in enumerate(_blocks()) if _monitors(block) is not None])
def test_readme_example_runs(tmp_path: pathlib.Path, number: int) -> None:
    block = _blocks()[number]
    vms = _monitors(block)
    if not vms:
        result = _run(block, tmp_path)
    else:
        from qmpcore.server import start_in_subprocess

        with start_in_subprocess(tmp_path, vms) as server:
            # /run/vmN/qmp.sock is the simulated VM N-1, at tmp_path/vm<N-1>.qmp
            result = _run(_MONITOR.sub(lambda m: str(tmp_path / f"vm{int(m.group(1)) - 1}.qmp"), block), tmp_path)
            assert server.running
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout or "print(" not in block


def _run(program: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
