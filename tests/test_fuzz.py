"""The fuzz targets of tests/fuzz: regression inputs, seeds, and a bounded run.

Every input a fuzzer ever crashed on is kept in ``tests/fuzz/regressions``
and replayed here, as are the seeds built from the recorded sessions.  Each
target then runs under atheris for ``QMPCORE_FUZZ_SECONDS`` (default 45)
with a fixed seed; they run at once.  Long runs: see
``tests/fuzz/fuzz.py``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import IN_CI

HERE = pathlib.Path(__file__).resolve().parent
FUZZ = HERE / "fuzz"
sys.path.insert(0, str(FUZZ))

import client_check  # noqa: E402
import framer_check  # noqa: E402
import seeds  # noqa: E402
import server_check  # noqa: E402

CHECKS = {"framer": framer_check.check, "client": client_check.check, "server": server_check.check}
REGRESSIONS = sorted((FUZZ / "regressions").glob("*/*"))
SECONDS = int(os.environ.get("QMPCORE_FUZZ_SECONDS", "45"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression(path: pathlib.Path) -> None:
    CHECKS[path.parent.name](path.read_bytes())


@pytest.mark.parametrize("target", sorted(CHECKS))
def test_seeds(target: str, corpus_dir) -> None:
    count = 0
    for name, data in seeds.seeds(target):
        try:
            CHECKS[target](data)
        except AssertionError as exc:
            raise AssertionError(f"seed {name}: {exc}") from None
        count += 1
    assert count > 20


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory, corpus_dir):
    """Start every fuzzer at once; yield ``{target: (process, workdir)}``."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("atheris is required in CI (pip install atheris)")
        pytest.skip("atheris is not installed")
    # The qmpcore this test runs on (installed, or on PYTHONPATH, made
    # absolute: the fuzzers run in their own directories).
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    runs = {}
    try:
        for target in sorted(CHECKS):
            work = tmp_path_factory.mktemp(f"fuzz-{target}")
            command = [
                sys.executable,
                str(FUZZ / "fuzz.py"),
                target,
                str(work / "corpus"),
                "-seed=1",
                f"-max_total_time={SECONDS}",
                f"-artifact_prefix={work}/",
                "-print_final_stats=1",
            ]
            log = open(work / "log", "wb")
            runs[target] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work), work)
            log.close()
        yield runs
    finally:
        for process, _ in runs.values():
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(CHECKS))
def test_fuzz(target: str, fuzz_runs) -> None:
    process, work = fuzz_runs[target]
    try:
        status = process.wait(timeout=SECONDS + 240)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{target} fuzzer did not stop within {SECONDS + 240} s")
    log = (work / "log").read_text(errors="replace")
    crashes = [p for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    found = "".join(f"\n{p.name}: {p.read_bytes().hex()}" for p in crashes)
    assert status == 0 and not crashes, (
        f"{target} fuzzer failed (exit {status}); add the input to tests/fuzz/regressions/{target}/{found}\n{log[-6000:]}"
    )
    assert "Done " in log, log[-3000:]
