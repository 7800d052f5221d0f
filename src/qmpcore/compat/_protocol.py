"""``qemu.qmp.protocol``: runstates, their checks, and ``AsyncProtocol``.

:class:`AsyncProtocol` is the base qemu.qmp's ``QMPClient`` derives from:
the connection's name and logger, its :class:`Runstate` and the
``_cb_outbound``/``_cb_inbound`` message hooks subclasses override (QEMU's
``qmp_tui`` shows every message with them).  Here the bytes are moved by
qmpcore's clients, so it holds no streams of its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from ._errors import ConnectError, StateError
from ._runstate import Runstate

__all__ = [
    "Runstate",
    "ConnectError",
    "StateError",
    "AsyncProtocol",
    "require",
    "check_state",
    "SocketAddrT",
    "InternetAddrT",
    "UnixAddrT",
]

InternetAddrT = tuple[str, int]
UnixAddrT = str
SocketAddrT = UnixAddrT | InternetAddrT

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

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


def require(required_state: Runstate) -> Callable[[F], F]:
    """Decorator: the method raises :class:`StateError` unless the object's
    ``runstate`` is ``required_state`` (coroutines are checked when called)."""

    def decorator(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(proto: Any, *args: Any, **kwargs: Any) -> Any:
                check_state(type(proto).__name__, proto.runstate, required_state)
                return await func(proto, *args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(proto: Any, *args: Any, **kwargs: Any) -> Any:
            check_state(type(proto).__name__, proto.runstate, required_state)
            return func(proto, *args, **kwargs)

        return cast(F, wrapper)

    return decorator


class AsyncProtocol(Generic[T]):
    """Name, logger, runstate and message hooks of a qemu.qmp connection.

    :param name: nickname; the logger becomes ``<module>.<name>``.
    """

    #: Logger of this connection (a child named after it, once named).
    logger = logging.getLogger(__name__)
    _qmpcore_logger_base = __name__

    def __init__(self, name: str | None = None) -> None:
        self._name: str | None = None
        self.name = name
        self._runstate = Runstate.IDLE
        self._runstate_changed: asyncio.Event | None = None

    def __repr__(self) -> str:
        tokens = [] if self.name is None else [f"name={self.name!r}"]
        tokens.append(f"runstate={self.runstate.name}")
        return f"<{type(self).__name__} {' '.join(tokens)}>"

    @property
    def name(self) -> str | None:
        """Nickname of this connection, used in log messages."""
        return self._name

    @name.setter
    def name(self, name: str | None) -> None:
        base = logging.getLogger(self._qmpcore_logger_base)
        self.logger = base.getChild(name) if name else base
        self._name = name

    @property
    def runstate(self) -> Runstate:
        """Where the session stands."""
        return self._runstate

    async def runstate_changed(self) -> Runstate:
        """Wait for :attr:`runstate` to change; return the new one."""
        await self._qmpcore_runstate_event.wait()
        return self._runstate

    @property
    def _qmpcore_runstate_event(self) -> asyncio.Event:
        if self._runstate_changed is None:
            self._runstate_changed = asyncio.Event()
        return self._runstate_changed

    def _set_state(self, state: Runstate) -> None:
        if state is self._runstate:
            return
        self.logger.debug("Transitioning from '%s' to '%s'.", self._runstate, state)
        self._runstate = state
        event = self._qmpcore_runstate_event
        event.set()
        event.clear()

    # -- message hooks ----------------------------------------------------

    def _cb_outbound(self, msg: T) -> T:
        """Hook: every message sent passes here; returns what is sent.
        The base one logs it at DEBUG."""
        self.logger.debug("--> %s", str(msg))
        return msg

    def _cb_inbound(self, msg: T) -> T:
        """Hook: every message received passes here first; returns what
        the client goes on with.  The base one logs it at DEBUG."""
        self.logger.debug("<-- %s", str(msg))
        return msg

    @property
    def _qmpcore_hooked(self) -> bool:
        """True when a subclass overrides a message hook."""
        cls = type(self)
        return cls._cb_outbound is not AsyncProtocol._cb_outbound or cls._cb_inbound is not AsyncProtocol._cb_inbound
