"""``qemu.qmp.util``: the asyncio and logging helpers qemu.qmp's tools import.

QEMU's ``qmp_tui`` and scripts written against qemu.qmp 0.0.6 import these
by name; they behave as the originals do.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
import warnings
from typing import TypeVar

__all__ = [
    "get_or_create_event_loop",
    "flush",
    "upper_half",
    "bottom_half",
    "exception_summary",
    "pretty_traceback",
]

T = TypeVar("T")


def get_or_create_event_loop() -> asyncio.AbstractEventLoop:
    """This thread's current event loop; a new one (set as current) if
    there is none.  For synchronous programs, not asyncio applications."""
    try:
        with warnings.catch_warnings():
            # Python <= 3.13 warns when no loop is set (and creates one).
            warnings.simplefilter("ignore")
            return asyncio.get_event_loop()
    except RuntimeError:  # Python 3.14+: no loop set for this thread
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return loop


async def flush(writer: asyncio.StreamWriter) -> None:
    """Wait until ``writer``'s buffer is empty (``drain()`` only waits until
    it is below the high-water mark); the write limits are restored after."""
    transport = writer.transport
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(0, 0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high, low)


def upper_half(func: T) -> T:
    """Marks a method that runs in the caller's context (does nothing)."""
    return func


def bottom_half(func: T) -> T:
    """Marks a method that runs in the connection's own tasks (does nothing)."""
    return func


def exception_summary(exc: BaseException) -> str:
    """``"module.Type: message"`` (builtins unqualified; no message, no colon)."""
    name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("__main__", "builtins"):
        name = f"{module}.{name}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def pretty_traceback(prefix: str = "  | ") -> str:
    """The exception being handled, formatted with ``prefix`` before each line."""
    output = "".join(traceback.format_exception(*sys.exc_info()))
    return "\n".join(prefix + line for line in output.split("\n")[:-1])
