"""The compiled framer under AddressSanitizer and UndefinedBehaviorSanitizer.

``src/_framer.pyx`` is compiled with ``gcc -fsanitize=address,undefined``
into a private copy of the package in a temporary directory (nothing in the
working tree is touched), then the framer test suites and the framer fuzz
seeds run against that build in a subprocess, with the ASan runtime
preloaded into the (uninstrumented) Python and ``PYTHONMALLOC=malloc`` so
that Python's own buffers are checked too.  Any sanitizer report fails the
test.  Leak detection is off: CPython keeps memory until exit by design.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import IN_CI

REPO = pathlib.Path(__file__).resolve().parent.parent
SUITES = [
    "tests/test_framer.py",
    "tests/test_framer_properties.py",
    "tests/test_framer_rules.py",
    "tests/test_fuzz.py::test_seeds[framer]",
]
FLAGS = "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer"
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def _runtime() -> str:
    """Path of gcc's ASan runtime, or skip (fail in CI) without one."""
    gcc = shutil.which("gcc")
    path = ""
    if gcc:
        path = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not path or not os.path.isabs(path) or not os.path.exists(path):
        if IN_CI:
            pytest.fail("gcc with AddressSanitizer is required in CI")
        pytest.skip("gcc with AddressSanitizer not available")
    return path


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory) -> dict:
    """Build the sanitized package; return the environment that runs it."""
    runtime = _runtime()
    if IN_CI:
        import Cython  # noqa: F401  (the test extra installs it; a skip would hide the check)
    else:
        pytest.importorskip("Cython")
    work = tmp_path_factory.mktemp("asan")
    (work / "src").mkdir()
    shutil.copy(REPO / "setup.py", work)
    for source in [*(REPO / "src").glob("_framer.p*"), REPO / "src" / "_scan.h"]:
        shutil.copy(source, work / "src")
    lib = work / "lib"
    shutil.copytree(
        REPO / "src" / "qmpcore", lib / "qmpcore", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    )
    build_env = dict(os.environ, QMPCORE_CFLAGS=FLAGS, QMPCORE_LDFLAGS="-fsanitize=address,undefined")
    build_env.pop("QMPCORE_NO_EXTENSIONS", None)
    built = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(lib), "--build-temp", str(work / "build")],
        cwd=work,
        env=build_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    modules = list((lib / "qmpcore" / "framing").glob("_framer*.so"))
    assert built.returncode == 0 and modules, f"sanitized build failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    binary = modules[0].read_bytes()
    assert b"__asan_init" in binary and b"__ubsan_handle" in binary, "the build is not instrumented"
    env = dict(
        os.environ,
        PYTHONPATH=str(lib),
        PYTHONMALLOC="malloc",
        LD_PRELOAD=runtime,
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        HYPOTHESIS_PROFILE="sanitizers",
    )
    env.pop("QMPCORE_NO_EXTENSIONS", None)
    return {"env": env, "lib": lib}


def _run(args: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"")[-8000:]
        pytest.fail(f"the sanitized run took over {timeout} s; its output so far:\n{output!r}")


def _assert_clean(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    found = [line for line in output.splitlines() if any(mark in line for mark in REPORTS)]
    assert result.returncode == 0 and not found, (
        f"exit {result.returncode}; sanitizer reports: {found}\n{output[-8000:]}"
    )


def test_sanitized_build_is_the_one_loaded(sanitized) -> None:
    code = "import qmpcore; from qmpcore.framing import _framer; print(qmpcore.implementation, _framer.__file__)"
    result = _run([sys.executable, "-c", code], sanitized["env"], 120)
    _assert_clean(result)
    implementation, path = result.stdout.split()
    assert implementation == "cython"
    assert pathlib.Path(path).is_relative_to(sanitized["lib"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_framer_suites_under_sanitizers(sanitized, corpus_dir) -> None:
    # --capture=sys: reports are written to fd 2 by the runtime; with fd
    # capture they would vanish along with the aborted process.
    args = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider", *SUITES]
    result = _run(args, sanitized["env"], 540)
    _assert_clean(result)
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-3000:]
