"""``Runstate``: where a qemu.qmp client's session stands."""

from __future__ import annotations

from enum import Enum

__all__ = ["Runstate"]


class Runstate(Enum):
    """Where a client's session stands."""

    #: Disconnected, nothing running.
    IDLE = 0
    #: Connecting, listening or negotiating.
    CONNECTING = 1
    #: Connected; commands may be executed.
    RUNNING = 2
    #: The connection ended or is ending; ``disconnect()`` returns to IDLE.
    DISCONNECTING = 3
