"""Shared fixtures: both framer implementations, corpus location, CI rules."""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Callable

import pytest

from qmpcore.framing import pure as _framer_py

try:
    from qmpcore.framing import _framer as _framer_c
except ImportError:  # the guard test in test_implementation.py reports it
    _framer_c = None

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
#: The recorded QEMU 7.2, qemu-ga 7.2 and libvirt sessions, copied from
#: the project's reference corpus so that a plain clone tests on its own.
CORPUS = HERE / "data" / "corpus"
QEMU_CORPUS = CORPUS / "qemu-7.2"
LIBVIRT_CORPUS = CORPUS / "libvirt"

#: In CI, tests that need QEMU, the corpus or the compiled framer must run.
IN_CI = bool(os.environ.get("CI"))

IMPLEMENTATIONS = {"python": _framer_py.Framer}
if _framer_c is not None:
    IMPLEMENTATIONS["cython"] = _framer_c.Framer


def run_in_thread(results: dict, key: str, fn: Callable[[], object]) -> threading.Thread:
    """Start ``fn`` in a daemon thread; its result, or what it raised, goes to ``results[key]``."""

    def run() -> None:
        try:
            results[key] = fn()
        except BaseException as exc:
            results[key] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture(params=["cython", "python"])
def Framer(request):
    """Each framer test runs once per implementation."""
    cls = IMPLEMENTATIONS.get(request.param)
    if cls is None:
        if IN_CI and not os.environ.get("QMPCORE_NO_EXTENSIONS"):
            pytest.fail("compiled framer did not load")
        pytest.skip("compiled framer not built")
    return cls


@pytest.fixture(scope="session")
def corpus_dir() -> pathlib.Path:
    assert QEMU_CORPUS.is_dir(), f"the recorded sessions are part of the tests; missing at {CORPUS}"
    return CORPUS


class WorkClock:
    """A stand-in for ``qmpcore.client.share.clock``: each reading is
    ``step`` seconds after the last (``unit``, 1/1024 s, unless changed: exact
    in binary, as are the rests computed from it); ``readings`` counts them."""

    unit = 2.0**-10

    def __init__(self) -> None:
        self.step = self.unit
        self.now = 0.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


@pytest.fixture
def work_clock(monkeypatch: pytest.MonkeyPatch) -> WorkClock:
    """The clock costly work is measured with, faked (undone with ``monkeypatch``)."""
    from qmpcore.client import share

    clock = WorkClock()
    monkeypatch.setattr(share, "clock", clock)
    return clock
