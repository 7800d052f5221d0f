"""The maintainer's checks run as tests: lint, format, and the docs build.

Each runs the tool the way a maintainer would from the checkout and fails
with its output.  They look at the source tree, not at the installed
package, so they run once (the ``tooling`` marker lets the second run of
the suite, on the pure-Python framer, leave them out).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PYTHON_TREES = ["src", "tests", "benchmarks", "setup.py", "docs/conf.py"]

pytestmark = pytest.mark.tooling


def _run(*args: str, timeout: float = 600) -> None:
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"


def test_ruff_check() -> None:
    _run(sys.executable, "-m", "ruff", "check", *PYTHON_TREES)


def test_ruff_format() -> None:
    _run(sys.executable, "-m", "ruff", "format", "--check", *PYTHON_TREES)


def test_docs_build_without_warnings(tmp_path: pathlib.Path) -> None:
    _run(sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path / "html"))
