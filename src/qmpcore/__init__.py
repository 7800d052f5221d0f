"""qmpcore: fast, dependable QMP (QEMU Machine Protocol) for Python.

The framer comes in two implementations with identical behaviour: the
compiled one (``qmpcore.framing._framer``) and a pure-Python twin.  Setting
``QMPCORE_NO_EXTENSIONS=1`` before import selects the pure one;
:data:`implementation` tells which is live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CommandError,
    ConnectionLost,
    EventOverflow,
    FrameError,
    ProtocolError,
    QMPError,
    StateError,
    TimeoutError,
)
from .framing import SYNC, Framer, encode, implementation
from .protocol.events import Event, VersionInfo

__version__ = "0.1.0"

# Higher layers load on first use, so ``import qmpcore`` stays cheap for
# code that only frames bytes.
_LAZY = {
    "connect": "client.aio",
    "QMPClient": "client.aio",
    "connect_guest_agent": "client.aio",
    "GuestAgentClient": "client.aio",
    "connect_sync": "client.sync",
    "SyncQMPClient": "client.sync",
    "connect_guest_agent_sync": "client.sync",
    "SyncGuestAgentClient": "client.sync",
    "EventStream": "client.aio",
    "Fleet": "client.fleet",
    "run": "client.loop",
}


if TYPE_CHECKING:  # what __getattr__ below loads, as type checkers should see it
    from .client.aio import EventStream, GuestAgentClient, QMPClient, connect, connect_guest_agent
    from .client.fleet import Fleet
    from .client.loop import run
    from .client.sync import SyncGuestAgentClient, SyncQMPClient, connect_guest_agent_sync, connect_sync


def __getattr__(name: str) -> Any:  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qmpcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Framer",
    "SYNC",
    "encode",
    "implementation",
    # Spelled out (not *errors.__all__) so type checkers see them exported.
    "QMPError",
    "FrameError",
    "ProtocolError",
    "CommandError",
    "ConnectionLost",
    "TimeoutError",
    "StateError",
    "EventOverflow",
    "Event",
    "VersionInfo",
    # the names in _LAZY
    "connect",
    "QMPClient",
    "connect_guest_agent",
    "GuestAgentClient",
    "connect_sync",
    "SyncQMPClient",
    "connect_guest_agent_sync",
    "SyncGuestAgentClient",
    "EventStream",
    "Fleet",
    "run",
]
