"""``Runstate`` and the state checks of qemu.qmp's client, with its wording."""

from __future__ import annotations

from enum import Enum

from ._errors import StateError

__all__ = ["Runstate", "SocketAddrT", "InternetAddrT", "UnixAddrT", "check_state"]

InternetAddrT = tuple[str, int]
UnixAddrT = str
SocketAddrT = UnixAddrT | InternetAddrT


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


_WHY = {
    Runstate.CONNECTING: "is currently connecting.",
    Runstate.DISCONNECTING: "is disconnecting. Call disconnect() to return to IDLE state.",
    Runstate.RUNNING: "is already connected and running.",
    Runstate.IDLE: "is disconnected and idle.",
}


def check_state(name: str, state: Runstate, required: Runstate) -> None:
    """Raise :class:`StateError` unless ``state`` is ``required``.

    ``name`` is the class name used in the message (``"QMPClient"``).
    """
    if state is not required:
        raise StateError(f"{name} {_WHY[state]}", state, required)
