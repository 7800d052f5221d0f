"""Guard: CI must test the compiled framer, and the switch must work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qmpcore


def test_the_expected_framer_loaded():
    """Fails when the extension was expected but did not load, so a broken
    build cannot pass by silently testing only the pure twin; and when the
    pure twin was asked for (``QMPCORE_NO_EXTENSIONS=1``) but is not live."""
    if os.environ.get("QMPCORE_NO_EXTENSIONS", "") not in ("", "0"):
        from qmpcore.framing import pure

        assert (qmpcore.implementation, qmpcore.Framer) == ("python", pure.Framer)
        return
    assert qmpcore.implementation == "cython"
    from qmpcore.framing import _framer

    assert qmpcore.Framer is _framer.Framer


@pytest.mark.parametrize("value,expected", [("1", "python"), ("", "cython")])
def test_environment_switch(value, expected):
    env = dict(os.environ, QMPCORE_NO_EXTENSIONS=value)
    code = "import qmpcore; print(qmpcore.implementation, qmpcore.Framer.__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    impl, module = out.split()
    modules = {"python": "qmpcore.framing.pure", "cython": "qmpcore.framing._framer"}
    assert (impl, module) == (expected, modules[expected])


def test_both_raise_the_same_exception_types():
    from qmpcore.framing import _framer
    from qmpcore.framing import pure as _framer_py

    for cls in (_framer.Framer, _framer_py.Framer):
        with pytest.raises(TypeError):
            cls().feed("str")
        with pytest.raises(ValueError):
            cls(max_frame_size=0)
        (err,) = cls().feed(b"}")
        assert type(err) is qmpcore.FrameError
