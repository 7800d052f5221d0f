"""Benchmarks run with ``python -m pytest benchmarks/ --benchmark-enable``.

Benchmark modules are named ``bench_*.py`` so the normal test run (which
only looks in ``tests/``) never picks them up; this hook collects them here.
"""

from __future__ import annotations

import asyncio

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def loop():
    """A fresh event loop for the per-call benchmarks."""
    made = asyncio.new_event_loop()
    yield made
    made.close()
