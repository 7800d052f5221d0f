"""What ``python -m qmpcore bench`` tells its user besides figures: why a
section did not run, and install hints that work when pasted into any shell."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from qmpcore import bench
from qmpcore.bench import _report

SRC = pathlib.Path(bench.__file__).resolve().parents[1]


def options(**given):
    values = dict(quick=True, json=None, only=None, vms=None, rounds=None, target=None, real_qemu=0)
    values.update(given)
    return bench.Options(**values)


@pytest.fixture
def no_sections(monkeypatch):
    """Every section replaced by one that measures nothing (the report is what is tested)."""
    ran = []
    for name in list(bench.SECTIONS):
        monkeypatch.setitem(bench.SECTIONS, name, lambda opts, progress, name=name: ran.append(name) or [])
    return ran


def test_a_default_run_says_why_real_qemu_did_not_run(no_sections, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("QMPCORE_QEMU", str(tmp_path / "qemu-system-x86_64"))  # not there
    assert bench.run(options()) == 0
    assert no_sections == ["framing", "socket", "fleet", "schema"]
    out = capsys.readouterr().out
    assert "real-qemu: skipped, not asked for with --real-qemu N, and qemu-system-x86_64 was not found" in out

    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("QMPCORE_QEMU", str(fake))
    assert bench.run(options(json="-")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["skipped"] == [
        f"real-qemu: skipped, it runs only when asked: --real-qemu N starts N {fake} -M none and polls them"
    ]


def test_chosen_sections_need_no_explanation(no_sections, capsys):
    assert bench.run(options(only=["framing"])) == 0
    assert no_sections == ["framing"]
    assert "skipped" not in capsys.readouterr().out


def test_install_hints_are_quoted():
    assert "pip install '.[bench]'" in _report.QEMU_QMP_MISSING
    unquoted = re.compile(r"pip install [^'\"\s]*\[")  # brackets a shell would glob
    found = [
        f"{path.relative_to(SRC)}: {line.strip()}"
        for path in SRC.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if unquoted.search(line)
    ]
    assert found == []
