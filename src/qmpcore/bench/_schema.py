"""Bench section ``schema``: what checking a command costs beside a round trip.

``Schema.check`` runs before each command with ``validate=True``.  Each row
times it on one command (bundled QEMU 7.2 schema) and shows it beside a
blocking ``query-status`` round trip to a simulated VM (or ``--target``),
with the check's share of that round trip.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from typing import Any

from ._report import Figure, Row
from ._timing import FULL, QUICK, Budget, time_runs

__all__ = ["schema_section", "COMMANDS"]

#: (title, command, arguments): no arguments, a few members, a flat union
#: (the largest), integers of narrow types.
COMMANDS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("query-status, no arguments", "query-status", None),
    ("block-commit, 3 members", "block-commit", {"device": "drive0", "top-node": "overlay1", "speed": 1 << 20}),
    (
        "blockdev-add qcow2, union + nested",
        "blockdev-add",
        {
            "driver": "qcow2",
            "node-name": "disk0",
            "discard": "unmap",
            "cache": {"direct": True, "no-flush": False},
            "file": {"driver": "file", "filename": "/img/disk0.qcow2", "aio": "native"},
            "backing": None,
        },
    ),
    (
        "migrate-set-parameters, 6 integers",
        "migrate-set-parameters",
        {
            "compress-level": 1,
            "compress-threads": 8,
            "max-bandwidth": 1 << 30,
            "downtime-limit": 300,
            "multifd-channels": 4,
            "max-postcopy-bandwidth": 1 << 28,
        },
    ),
]
ROUND_TRIPS = 200


def _round_trip(path: str, budget: Budget) -> float:
    """µs per blocking ``query-status`` round trip to ``path``."""
    from ..client.sync import connect_sync

    with connect_sync(path) as client:

        def run() -> None:
            for _ in range(ROUND_TRIPS):
                client.execute("query-status")

        run()  # warm-up
        return time_runs({"rt": run}, budget)["rt"].median / ROUND_TRIPS * 1e6


def schema_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """One row per command: µs per ``check``, beside the round trip."""
    from ..protocol.schema import Schema

    budget = QUICK if opts.quick else FULL
    progress("schema: round trip")
    if opts.target:
        round_trip = _round_trip(opts.target, budget)
        where = f"QEMU at {opts.target}"
    else:
        from ..server import start_in_subprocess

        with tempfile.TemporaryDirectory(prefix="qmpcore-bench-") as directory:
            with start_in_subprocess(directory, 1) as server:
                round_trip = _round_trip(server.qmp_paths[0], budget)
        where = "simulated VM"
    schema = Schema.bundled()
    rows = []
    for title, command, arguments in COMMANDS:
        progress(f"schema: {title}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            schema.check(command, arguments)  # valid, nothing deprecated or unstable

        def run(command: str = command, arguments: Any = arguments) -> None:
            for _ in range(100):
                schema.check(command, arguments)

        cost = time_runs({"check": run}, budget)["check"].median / 100 * 1e6
        baselines: dict[str, Figure] = {f"round trip ({where})": round_trip}
        rows.append(
            Row(
                "schema",
                f"check: {title}",
                "µs/cmd",
                True,
                cost,
                baselines,
                variant="Schema.check",
                extra={"% of round trip": cost / round_trip * 100},
            )
        )
    return rows
