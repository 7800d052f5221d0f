"""Type stub for the compiled framer ``qmpcore.framing._framer`` (see :mod:`qmpcore.framing.pure`)."""

from typing import Any

_Bytes = bytes | bytearray | memoryview

class Framer:
    """Split a byte stream into QMP frames and decode them (compiled)."""

    max_frame_size: int
    max_depth: int
    max_tokens: int
    raw: bool
    strict: bool
    defer: int
    defer_step: int
    def __init__(
        self,
        max_frame_size: int = ...,
        max_depth: int = ...,
        *,
        max_tokens: int = ...,
        raw: bool = ...,
        strict: bool = ...,
        defer: int = ...,
    ) -> None: ...
    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame."""
    @property
    def capacity(self) -> int:
        """Bytes allocated for the buffer (given back after a large frame)."""
    def answer_errors(
        self,
        prefix: bytes,
        suffix: bytes,
        not_object: str | None = None,
        envelope: tuple[str, str, tuple[str, ...]] | None = None,
    ) -> None:
        """Strict mode: report errors as :class:`Answers` items."""
    def reset(self) -> None:
        """Forget any partial frame and start afresh."""
    def feed(self, data: _Bytes) -> list[Any]:
        """Add bytes from the stream; return the items they complete:
        decoded values, ``SYNC``, or ``FrameError`` instances."""

class Answers:
    """QEMU's replies to a run of errors, produced as they are taken (compiled)."""

    count: int
    remaining: int
    offset: int
    nbytes: int
    def take(self, limit: int | None = None) -> bytes:
        """The next replies: all, or until at least ``limit`` bytes (one at least)."""

def _tables() -> dict[str, Any]:
    """The tables and constants the compiled framer runs on."""

def _plain_line(line: _Bytes, max_depth: int) -> bool:
    """The compiled form of :func:`qmpcore.framing.rules.plain_line`."""

def _display_bytes(token: _Bytes) -> str:
    """The compiled form of :func:`qmpcore.framing.qemu_json.display`."""

def _scan_impl(name: str | None = None) -> str:
    """The block scan in use (``avx2``, ``sse2`` or ``none``); with ``name`` (or ``portable``), use that one if this CPU has it."""

def qdict_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """QEMU's QDict iteration order of ``keys`` (see :mod:`qmpcore.framing.qdict`)."""
