"""The README's Python examples type-check, and the ones that need only a
QMP monitor run against the embedded server.

Each ```python block of README.md is a program of its own: mypy checks
every one under ``--strict`` (reading the checkout's package as if
installed, as ``tests/test_typing.py`` does), and the blocks that talk to
``/run/vm1/qmp.sock`` and nothing else are run with that path pointing at
a simulated VM.
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
EXAMPLE_PATH = "/run/vm1/qmp.sock"

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[str]:
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def _runnable(block: str) -> bool:
    """A block that opens only the example monitor, needs no file or
    package beyond qmpcore, and does not stop the VM it is given."""
    paths = set(re.findall(r'"(/[^"]*)"', block))
    return (
        paths == {EXAMPLE_PATH} and "asyncio.run(" in block or paths == {EXAMPLE_PATH} and "connect_sync(" in block
    ) and not any(word in block for word in ("ssl", "blockdev_add", "Proxy", "device_del"))


def test_the_readme_has_python_examples() -> None:
    blocks = _blocks()
    assert len(blocks) >= 10
    assert any(_runnable(block) for block in blocks)


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


@pytest.mark.parametrize("number", [n for n, block in enumerate(_blocks()) if _runnable(block)])
def test_readme_example_runs_against_the_embedded_server(tmp_path: pathlib.Path, number: int) -> None:
    from qmpcore.server import start_in_subprocess

    block = _blocks()[number]
    with start_in_subprocess(tmp_path, 1) as server:
        program = block.replace(EXAMPLE_PATH, str(tmp_path / "vm0.qmp"))
        result = subprocess.run(
            [sys.executable, "-c", program],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        assert server.running
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout
