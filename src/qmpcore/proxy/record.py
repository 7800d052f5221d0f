"""Recording a proxy's traffic in the corpus transcript format.

The format is the one of the recorded QEMU sessions
(``tests/data/corpus/qemu-7.2/README.md``): a ``### title`` line, then
``C: b'...'`` for bytes a client wrote and ``S: b'...'`` for bytes written
to it, as Python bytes literals.  A proxy serves many clients, so each
``C:``/``S:`` line follows a comment saying when (seconds since the
recording started) and for which client::

    # @0.001234 client 1
    C: b'{"execute": "query-status", "id": 1}\\n'

``# @T client N connected ...`` and ``# @T client N disconnected`` mark
each client's session.  A reader that ignores comments sees each line as
in the corpus; ``qmpcore serve --replay FILE`` answers from it.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import IO, Any

__all__ = ["Recorder"]


class Recorder:
    """Writes one recording file; lines are flushed as they are written."""

    def __init__(self, path: str | os.PathLike[str], title: str) -> None:
        self.path = os.fspath(path)
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")
        self._start = time.monotonic()
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._write(
            f"### {title}\n"
            f"# recorded by qmpcore proxy at {started}; each '# @SECONDS client N' line gives the time\n"
            "# (since the start) and the client of the C:/S: line after it\n"
        )

    def _stamp(self) -> str:
        return f"{time.monotonic() - self._start:.6f}"

    def _write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()

    def client(self, client: int, side: str, data: bytes) -> None:
        """Record ``data`` written by (``side="C"``) or to (``"S"``) ``client``."""
        if data:
            self._write(f"# @{self._stamp()} client {client}\n{side}: {bytes(data)!r}\n")

    def note(self, client: int, what: str) -> None:
        """Record a session event (``connected ...``, ``disconnected``)."""
        self._write(f"# @{self._stamp()} client {client} {what}\n")

    def comment(self, text: str) -> None:
        self._write("".join(f"# {line}\n" for line in text.splitlines()))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
