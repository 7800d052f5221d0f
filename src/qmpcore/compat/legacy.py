"""Drop-in replacement for ``qemu.qmp.legacy`` (qemu.qmp 0.0.6's blocking
``QEMUMonitorProtocol``).

Change ``from qemu.qmp.legacy import QEMUMonitorProtocol`` to
``from qmpcore.compat.legacy import QEMUMonitorProtocol``.  The original
runs an asyncio event loop under every call; this one is a thin layer over
:class:`qmpcore.SyncQMPClient`: no event loop, usable from any thread, and
usable while an asyncio loop runs in the same thread.

::

    with QEMUMonitorProtocol("/run/vm1/qmp.sock") as qmp:
        qmp.connect()
        qmp.cmd("stop")
        event = qmp.pull_event(wait=5.0)
"""

from __future__ import annotations

import logging
import socket
import time
from types import TracebackType
from typing import Any, TypeVar

from ..client import sync
from ..errors import CommandError, ConnectionLost
from ..errors import StateError as _CoreStateError
from ..errors import TimeoutError as _CoreTimeoutError
from ._bridge import (
    MAX_FRAME_SIZE,
    RawCommand,
    connect_error,
    execute_error,
    greeting_or_error,
    listen_socket,
    split_address,
)
from ._errors import ConnectError, ExecInterruptedError, QMPError
from ._events import DEFAULT_MAXSIZE
from ._state import Runstate, SocketAddrT, check_state

__all__ = [
    "QEMUMonitorProtocol",
    "QMPBadPortError",
    "QMPMessage",
    "QMPReturnValue",
    "QMPObject",
    "QMPError",
]

#: A whole QMP message of any kind.
QMPMessage = dict[str, Any]
#: The ``return`` value of a command (usually a dict, but anything JSON).
QMPReturnValue = object
#: Any object in a QMP message.
QMPObject = dict[str, object]

#: How long connecting, the greeting and negotiation may take.
CONNECT_TIMEOUT = sync.CONNECT_TIMEOUT

_T = TypeVar("_T")


class QMPBadPortError(QMPError):
    """:meth:`QEMUMonitorProtocol.parse_address` found a non-numeric port."""


class QEMUMonitorProtocol:
    """A blocking QMP connection with qemu.qmp.legacy's interface.

    :param address: unix socket path, ``(host, port)``, or a connected
        ``socket.socket``.
    :param server: listen on ``address``; :meth:`accept` waits for QEMU.
    :param nickname: name used in log messages.
    """

    logger = logging.getLogger(__name__)

    def __init__(self, address: SocketAddrT | socket.socket, server: bool = False, nickname: str | None = None) -> None:
        if server and isinstance(address, socket.socket):
            raise ValueError("server argument should be False when passing a socket")
        self._address = address
        self._timeout: float | None = None
        self._client: sync.SyncQMPClient | None = None
        self._listener: socket.socket | None = None
        self._state = Runstate.IDLE
        self._greeting: QMPMessage | None = None
        if nickname:
            self.logger = logging.getLogger(__name__).getChild(nickname)
        if server:
            try:
                self._listener = listen_socket(address)  # type: ignore[arg-type]
            except Exception as exc:
                raise ConnectError("Failed to establish connection", exc) from exc
            self._state = Runstate.CONNECTING

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        self.close()

    @classmethod
    def parse_address(cls, address: str) -> SocketAddrT:
        """``"host:port"`` becomes ``(host, port)``; anything else is a path.

        :raise QMPBadPortError: when the port is not a number.
        """
        return split_address(address, QMPBadPortError)

    # -- connecting -----------------------------------------------------------

    def connect(self, negotiate: bool = True) -> QMPMessage | None:
        """Connect, read the greeting and (unless ``negotiate`` is false)
        run ``qmp_capabilities``.  Returns the greeting, or None when not
        negotiating.

        :raise ConnectError: when the connection or the session fails.
        """
        self._check(Runstate.IDLE)
        address = self._address
        if isinstance(address, socket.socket):
            return self._open(None, address, negotiate, CONNECT_TIMEOUT)
        return self._open(address, None, negotiate, CONNECT_TIMEOUT)

    def accept(self, timeout: float | None = 15.0) -> QMPMessage:
        """Wait up to ``timeout`` seconds (None: forever) for QEMU to connect
        to the listening socket, then greet and negotiate.

        :raise TimeoutError: when nobody connects in time.
        """
        self._check(Runstate.CONNECTING)
        listener, self._listener = self._listener, None
        assert listener is not None
        self._state = Runstate.IDLE
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            listener.settimeout(timeout)
            sock, _ = listener.accept()
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise ConnectError("Failed to establish connection", exc) from exc
        finally:
            listener.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        greeting = self._open(None, sock, True, remaining)
        assert greeting is not None
        return greeting

    def _open(
        self, address: SocketAddrT | None, sock: socket.socket | None, negotiate: bool, timeout: float | None
    ) -> QMPMessage | None:
        try:
            client = sync.connect_sync(
                address,
                sock=sock,
                negotiate=negotiate,
                oob=negotiate,
                timeout=timeout,
                max_frame_size=MAX_FRAME_SIZE,
                event_queue=DEFAULT_MAXSIZE,
            )
        except Exception as exc:
            raise connect_error(exc) from exc
        self._greeting = None
        if negotiate:
            try:
                self._greeting = greeting_or_error(client.greeting)._asdict()
            except Exception as exc:
                client.close()
                raise ConnectError("Failed to establish session", exc) from exc
        self._client = client
        self._state = Runstate.RUNNING
        return self._greeting

    # -- commands -------------------------------------------------------------

    def cmd_obj(self, qmp_cmd: QMPMessage) -> QMPMessage:
        """Send a whole command message; return the whole reply (an error
        reply is returned, not raised).  The caller's ``id``, if any, is in
        the reply; the message may hold ``execute`` or ``exec-oob``,
        ``arguments`` and ``id``."""
        client = self._running()
        raw = RawCommand.parse(qmp_cmd)
        try:
            if raw.oob:
                value = client.execute_oob(raw.command, raw.arguments, timeout=self._timeout)
            else:
                value = client.execute(raw.command, raw.arguments, timeout=self._timeout)
        except CommandError as err:
            return raw.reply(error=err)
        except (ConnectionLost, _CoreStateError):
            raise ExecInterruptedError("Disconnected") from None
        return raw.reply(value)

    def cmd_raw(self, name: str, args: dict[str, object] | None = None) -> QMPMessage:
        """:meth:`cmd_obj` for command ``name`` with ``args`` (if any)."""
        qmp_cmd: QMPMessage = {"execute": name}
        if args:
            qmp_cmd["arguments"] = args
        return self.cmd_obj(qmp_cmd)

    def cmd(self, cmd: str, **kwds: object) -> QMPReturnValue:
        """Run ``cmd`` with ``kwds`` as arguments; return its value.

        :raise ExecuteError: for an error reply.
        :raise TimeoutError: after the :meth:`settimeout` time.
        """
        client = self._running()
        try:
            return client.execute(cmd, kwds, timeout=self._timeout)
        except CommandError as err:
            raise execute_error(err, cmd, kwds, False) from None
        except (ConnectionLost, _CoreStateError):
            raise ExecInterruptedError("Disconnected") from None

    def settimeout(self, timeout: float | None) -> None:
        """Timeout (seconds, None for none) of :meth:`cmd`, :meth:`cmd_raw`
        and :meth:`cmd_obj`."""
        self._timeout = timeout

    def send_fd_scm(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS) for a following ``getfd``/``add-fd``."""
        client = self._running()
        if not client.address.is_unix:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        client.send_fd(fd)

    # -- events ---------------------------------------------------------------

    def pull_event(self, wait: bool | float = False) -> QMPMessage | None:
        """The oldest event not yet pulled.

        :param wait: False or 0: return None if there is none; True: wait
            as long as it takes; a number: wait up to that many seconds.
        :raise TimeoutError: when a timed wait runs out.
        """
        client = self._client
        if client is None:
            if not wait:
                return None
            check_state("QMPClient", self._state, Runstate.RUNNING)
        assert client is not None
        event = _take_event(client)  # reads what arrived since the last read
        if event is not None or not wait:
            return event
        timeout = None if wait is True else float(wait)
        try:
            return client.pull_event(timeout).raw
        except _CoreTimeoutError:
            raise _CoreTimeoutError() from None  # qemu.qmp's has no message

    def get_events(self, wait: bool | float = False) -> list[QMPMessage]:
        """Every pending event (removed from the queue); if there is none,
        wait for one as :meth:`pull_event` does."""
        events: list[QMPMessage] = []
        client = self._client
        if client is not None:
            while True:
                event = _take_event(client)
                if event is None:
                    break
                events.append(event)
        if events:
            return events
        event = self.pull_event(wait)
        return [event] if event is not None else []

    def clear_events(self) -> None:
        """Drop every pending event."""
        client = self._client
        if client is not None:
            while _take_event(client) is not None:
                pass

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (events already received stay pullable).

        Raises ``EOFError`` if the server had already closed it, as
        qemu.qmp does.
        """
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        client = self._client
        state, self._state = self._state, Runstate.IDLE
        if client is None or state is not Runstate.RUNNING:
            return
        hung_up = not client.poll()
        client.close()
        if hung_up:
            raise EOFError

    def __del__(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and getattr(self, "_state", None) is Runstate.RUNNING:
            self.logger.warning("QEMUMonitorProtocol object garbage collected without a prior call to close()")
            client.close()

    # -- helpers --------------------------------------------------------------

    def _check(self, required: Runstate) -> None:
        check_state("QMPClient", self._state, required)

    def _running(self) -> sync.SyncQMPClient:
        self._check(Runstate.RUNNING)
        assert self._client is not None
        return self._client


def _take_event(client: sync.SyncQMPClient) -> QMPMessage | None:
    """The oldest queued event, without waiting; None if there is none."""
    try:
        return client.pull_event(0).raw
    except (_CoreTimeoutError, ConnectionLost):
        return None
