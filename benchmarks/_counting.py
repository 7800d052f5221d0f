"""What the per-call benchmarks share: a transport that only counts, and a
``__main__`` that runs batches of one case for instruction counting (their
``loop`` fixture is in conftest).

``python benchmarks/bench_X.py CASE N`` runs N batches of CASE with the
cyclic collector off; run it under ``valgrind --tool=callgrind`` at two N
and divide the difference of the counts by the difference of the calls.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

Prepare = Callable[[str, asyncio.AbstractEventLoop], Callable[[], int]]


def run_batches(prepared: Prepare, argv: list[str], default: str, batch: int) -> None:
    """Run ``argv[1]`` batches (100) of case ``argv[0]`` (``default``)."""
    name = argv[0] if argv else default
    batches = int(argv[1]) if len(argv) > 1 else 100
    made = asyncio.new_event_loop()
    try:
        run = prepared(name, made)
        assert run() == batch
        gc.disable()  # a collection landing in one run and not another would blur instruction counts
        for _ in range(batches):
            run()
    finally:
        gc.enable()
        made.close()


class NullTransport(asyncio.Transport):
    """Stands in for the socket: counts writes and bytes, keeps only the last."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = 0
        self.last: Any = b""

    def write(self, data: Any) -> None:
        self.writes += 1
        self.written += len(data)
        self.last = data

    def writelines(self, pieces: Any) -> None:
        for data in pieces:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
