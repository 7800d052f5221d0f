"""qmpcore: fast, dependable QMP (QEMU Machine Protocol) for Python.

The framer comes in two implementations with identical behaviour: the
compiled one (``qmpcore.framing._framer``) and a pure-Python twin.  Setting
``QMPCORE_NO_EXTENSIONS=1`` before import selects the pure one;
:data:`implementation` tells which is live.

Loaded on first use (so ``import qmpcore`` stays cheap for code that only
frames bytes), and listed by ``dir(qmpcore)``:

* :func:`connect`, :class:`QMPClient`, :func:`connect_guest_agent`,
  :class:`GuestAgentClient`, :class:`EventStream` -- the asyncio clients;
* :func:`connect_sync`, :class:`SyncQMPClient`,
  :func:`connect_guest_agent_sync`, :class:`SyncGuestAgentClient` -- the
  blocking clients;
* :class:`Fleet` -- many VMs from one event loop; :class:`Stats` -- the
  counters of a client or a fleet;
* :func:`run` -- run a coroutine on uvloop when installed, else asyncio;
* :class:`Schema` -- QEMU's schema about itself: feature probes in
  libvirt's path language, QEMU's argument checks before sending.

Errors are in :mod:`qmpcore.errors` (all importable from here too).
Logging goes to the ``qmpcore`` logger and below it, which has a
:class:`logging.NullHandler`: nothing is printed unless the program
configures logging; DEBUG on ``qmpcore.client`` traces every connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    CommandError,
    CommandNotFound,
    ConnectError,
    ConnectionLost,
    DeprecatedWarning,
    DeviceNotActive,
    DeviceNotFound,
    EventOverflow,
    FrameError,
    GenericError,
    KVMMissingCap,
    ProtocolError,
    QMPError,
    QMPWarning,
    SchemaPathError,
    StateError,
    TimeoutError,
    TLSError,
    UnstableWarning,
)
from .framing import SYNC, Framer, encode, implementation
from .protocol.events import Event, VersionInfo

__version__ = "0.1.0"

# A library prints nothing unless the program configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

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
    "Stats": "client.core",
    "Schema": "protocol.schema",
    "run": "client.loop",
}


if TYPE_CHECKING:  # what __getattr__ below loads, as type checkers should see it
    from .client.aio import EventStream, GuestAgentClient, QMPClient, connect, connect_guest_agent
    from .client.core import Stats
    from .client.fleet import Fleet
    from .client.loop import run
    from .client.sync import SyncGuestAgentClient, SyncQMPClient, connect_guest_agent_sync, connect_sync
    from .protocol.schema import Schema


def __getattr__(name: str) -> Any:  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qmpcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones included."""
    return sorted({*globals(), *_LAZY})


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
    "GenericError",
    "CommandNotFound",
    "DeviceNotActive",
    "DeviceNotFound",
    "KVMMissingCap",
    "ConnectError",
    "ConnectionLost",
    "TimeoutError",
    "StateError",
    "EventOverflow",
    "SchemaPathError",
    "QMPWarning",
    "DeprecatedWarning",
    "UnstableWarning",
    "TLSError",
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
    "Stats",
    "Schema",
    "run",
]
