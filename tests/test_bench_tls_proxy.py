"""``qmpcore bench --only tls --only proxy``: the rows exist and hold figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.qemu  # both sections also measure a real QEMU


def test_tls_and_proxy_sections(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "qmpcore", "bench", "--quick", "--only", "tls", "--only", "proxy", "--vms", "4"]
        + ["--rounds", "2", "--json", "-"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=280,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["skipped"] == []
    rows = {(row["section"], row["case"]): row for row in data["rows"]}
    for case in ("round trip (simulated VM)", "fleet query-status, 4 VMs", "round trip (QEMU)"):
        row = rows[("tls", case)]
        plain = row["baselines"]["plain TCP"]
        assert row["qmpcore"] > 0 and plain["value"] > 0
        assert plain["ratio"] == pytest.approx(row["qmpcore"] / plain["value"])
    assert rows[("tls", "fleet query-status, 4 VMs")]["better"] == "higher"
    for case in ("round trip (simulated VM)", "round trip (QEMU)"):
        row = rows[("proxy", case)]
        assert row["qmpcore"] > 0 and row["baselines"]["direct"]["value"] > 0
    fanout = rows[("proxy", "event flood to 100 clients")]
    assert fanout["qmpcore"] > 0 and fanout["extra"]["deliveries/s"] > 0
