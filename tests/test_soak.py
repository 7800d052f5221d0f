"""Soak with faults (see :mod:`qmpcore.soak`): a short run in CI.

``QMPCORE_SOAK_SECONDS`` sets the length (default 30);
``python -m qmpcore soak --minutes N`` runs long ones.
"""

from __future__ import annotations

import json
import os

import pytest

from qmpcore.soak import SoakReport, main, soak

SECONDS = float(os.environ.get("QMPCORE_SOAK_SECONDS", "30"))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 120)
async def test_soak_with_faults(tmp_path) -> None:
    report = await soak(SECONDS, vms=6, seed=6, timeout=1.0, directory=str(tmp_path))
    print(report.summary())
    assert report.passed, report.summary()
    assert report.lost == 0 and report.misrouted == 0
    # The run really exercised what it claims to.
    assert report.ok > 1000 and report.commands > report.ok
    assert len(report.faults) >= 8, report.faults
    assert report.events_received > 0 and report.events_dropped > 0
    assert report.flood_checks > 0 and report.reconnects > 0


def test_summary_names_the_verdict() -> None:
    report = SoakReport(1.0, 2, 3, commands=5, ok=5)
    assert "lost 0, misrouted 0" in report.summary() and "PASS" in report.summary()
    report.problem("something broke")
    assert not report.passed and "FAIL" in report.summary() and "something broke" in report.summary()


def test_report_as_json() -> None:
    report = SoakReport(1.0, 2, 3, commands=5, ok=4)
    report.failed["TimeoutError"] += 1
    report.faults["drop"] += 2
    data = json.loads(json.dumps(report.as_dict()))
    assert data["failed"] == {"TimeoutError": 1} and data["faults"] == {"drop": 2}
    assert data["passed"] is True and data["lost"] == 0


def test_command_line_rejects_bad_figures(capsys) -> None:
    assert main(["--minutes", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
