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

import asyncio
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
    LateReplies,
    RawCommand,
    broken_send,
    connect_error,
    exec_id,
    execute_error,
    greeting_or_error,
    listen_socket,
    log_connect_failure,
    plain_error,
    split_address,
)
from ._errors import ConnectError, ExecInterruptedError, QMPError
from ._events import DEFAULT_MAXSIZE
from ._protocol import Runstate, SocketAddrT, check_state
from ._util import exception_summary

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
#: Ids of abandoned commands remembered for the "Unknown ID" warning.

_T = TypeVar("_T")


class QMPBadPortError(QMPError):
    """:meth:`QEMUMonitorProtocol.parse_address` found a non-numeric port."""


class QEMUMonitorProtocol:
    """A blocking QMP connection with qemu.qmp.legacy's interface.

    :param address: unix socket path, ``(host, port)``, or a connected
        ``socket.socket``.
    :param server: listen on ``address``; :meth:`accept` waits for QEMU.
    :param nickname: name used in log messages.

    The adapter's own internals are named ``_qmpcore_*`` so that no
    subclass (such as QEMU's ``QMPShell``) collides with them.
    """

    logger = logging.getLogger(__name__)

    def __init__(self, address: SocketAddrT | socket.socket, server: bool = False, nickname: str | None = None) -> None:
        if server and isinstance(address, socket.socket):
            raise ValueError("server argument should be False when passing a socket")
        self._address = address
        self._timeout: float | None = None
        self._qmpcore_client: sync.SyncQMPClient | None = None
        self._qmpcore_listener: socket.socket | None = None
        self._qmpcore_state = Runstate.IDLE
        self._qmpcore_greeting: QMPMessage | None = None
        self._qmpcore_exec_number = 0  # numbers the "__qmp#" ids of cmd()
        self._qmpcore_late = LateReplies()
        if nickname:
            self.logger = logging.getLogger(__name__).getChild(nickname)
        if server:
            try:
                self._qmpcore_listener = listen_socket(address)  # type: ignore[arg-type]
            except Exception as exc:
                error = ConnectError("Failed to establish connection", plain_error(exc))
                log_connect_failure(self.logger, error)
                raise error from error.exc
            self._qmpcore_state = Runstate.CONNECTING

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
        self._qmpcore_check(Runstate.IDLE)
        address = self._address
        if isinstance(address, socket.socket):
            return self._qmpcore_open(None, address, negotiate, CONNECT_TIMEOUT)
        return self._qmpcore_open(address, None, negotiate, CONNECT_TIMEOUT)

    def accept(self, timeout: float | None = 15.0) -> QMPMessage:
        """Wait up to ``timeout`` seconds (None: forever) for QEMU to connect
        to the listening socket, then greet and negotiate.

        :raise TimeoutError: when nobody connects in time (``asyncio``'s,
            without a message, as qemu.qmp raises).
        """
        self._qmpcore_check(Runstate.CONNECTING)
        listener, self._qmpcore_listener = self._qmpcore_listener, None
        assert listener is not None
        self._qmpcore_state = Runstate.IDLE
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            listener.settimeout(timeout)
            sock, _ = listener.accept()
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                self.logger.error("Failed to establish connection: %s", exception_summary(asyncio.CancelledError()))
                raise asyncio.TimeoutError() from None
            error = ConnectError("Failed to establish connection", exc)
            log_connect_failure(self.logger, error)
            raise error from exc
        finally:
            listener.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        greeting = self._qmpcore_open(None, sock, True, remaining)
        assert greeting is not None
        return greeting

    def _qmpcore_open(
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
            error = connect_error(exc)
            log_connect_failure(self.logger, error)
            raise error from error.exc
        self._qmpcore_greeting = None
        if negotiate:
            try:
                self._qmpcore_greeting = greeting_or_error(client.greeting)._asdict()
            except Exception as exc:
                client.close()
                error = ConnectError("Failed to establish session", exc)
                log_connect_failure(self.logger, error)
                raise error from exc
        self._qmpcore_client = client
        self._qmpcore_late.reset()
        self._qmpcore_state = Runstate.RUNNING
        return self._qmpcore_greeting

    # -- commands -------------------------------------------------------------

    def cmd_obj(self, qmp_cmd: QMPMessage) -> QMPMessage:
        """Send a whole command message; return the whole reply (an error
        reply is returned, not raised).  The caller's ``id``, if any, is in
        the reply; the message may hold ``execute`` or ``exec-oob``,
        ``arguments`` and ``id``."""
        client = self._qmpcore_running()
        raw = RawCommand.parse(qmp_cmd)
        try:
            if raw.oob:
                value = client.execute_oob(raw.command, raw.arguments, timeout=self._timeout)
            else:
                value = client.execute(raw.command, raw.arguments, timeout=self._timeout)
        except CommandError as err:
            return raw.reply(error=err)
        except _CoreTimeoutError:
            self._qmpcore_late.abandoned.append(raw.id if raw.has_id else None)
            raise asyncio.TimeoutError() from None
        except (ConnectionLost, _CoreStateError):
            raise self._qmpcore_interrupted() from None
        finally:
            self._qmpcore_note_late()
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
        client = self._qmpcore_running()
        number = self._qmpcore_exec_number
        self._qmpcore_exec_number = number + 1
        try:
            return client.execute(cmd, kwds, timeout=self._timeout)
        except CommandError as err:
            raise execute_error(err, cmd, kwds, False, exec_id(number)) from None
        except _CoreTimeoutError:
            self._qmpcore_late.abandoned.append(exec_id(number))
            raise asyncio.TimeoutError() from None
        except (ConnectionLost, _CoreStateError):
            raise self._qmpcore_interrupted() from None
        finally:
            self._qmpcore_note_late()

    def settimeout(self, timeout: float | None) -> None:
        """Timeout (seconds, None for none) of :meth:`cmd`, :meth:`cmd_raw`
        and :meth:`cmd_obj`."""
        self._timeout = timeout

    def send_fd_scm(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS) for a following ``getfd``/``add-fd``."""
        client = self._qmpcore_running()
        if not client.address.is_unix:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        try:
            client.send_fd(fd)
        except (ConnectionLost, _CoreStateError) as err:
            self._qmpcore_hung_up()
            raise broken_send(err) from None

    # -- events ---------------------------------------------------------------

    def pull_event(self, wait: bool | float = False) -> QMPMessage | None:
        """The oldest event not yet pulled.

        :param wait: False or 0: return None if there is none; True: wait
            as long as it takes; a number: wait up to that many seconds.
        :raise TimeoutError: when a timed wait runs out (also when the
            server has hung up, as qemu.qmp does).
        """
        client = self._qmpcore_client
        if client is None:
            if not wait:
                return None
            check_state("QMPClient", self._qmpcore_state, Runstate.RUNNING)
        assert client is not None
        event = self._qmpcore_take_event(client)  # reads what arrived since the last read
        if event is not None or not wait:
            return event
        timeout = None if wait is True else float(wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return client.pull_event(timeout).raw
        except _CoreTimeoutError:
            raise asyncio.TimeoutError() from None  # qemu.qmp's has no message
        except ConnectionLost:
            self._qmpcore_hung_up()
        finally:
            self._qmpcore_note_late()
        # No event can come any more: a timed wait runs out as qemu.qmp's
        # does; an endless one would never return, so it says why instead.
        if deadline is None:
            check_state("QMPClient", self._qmpcore_state, Runstate.RUNNING)
            raise AssertionError("unreachable")  # pragma: no cover
        time.sleep(max(0.0, deadline - time.monotonic()))
        raise asyncio.TimeoutError()

    def get_events(self, wait: bool | float = False) -> list[QMPMessage]:
        """Every pending event (removed from the queue); if there is none,
        wait for one as :meth:`pull_event` does."""
        events: list[QMPMessage] = []
        client = self._qmpcore_client
        if client is not None:
            while True:
                event = self._qmpcore_take_event(client)
                if event is None:
                    break
                events.append(event)
        if events:
            return events
        event = self.pull_event(wait)
        return [event] if event is not None else []

    def clear_events(self) -> None:
        """Drop every pending event."""
        client = self._qmpcore_client
        if client is not None:
            while self._qmpcore_take_event(client) is not None:
                pass

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (events already received stay pullable).

        Raises ``EOFError`` if an earlier call found that the server had
        closed the connection, as qemu.qmp does.
        """
        listener, self._qmpcore_listener = self._qmpcore_listener, None
        if listener is not None:
            listener.close()
        client = self._qmpcore_client
        state, self._qmpcore_state = self._qmpcore_state, Runstate.IDLE
        if client is None or state not in (Runstate.RUNNING, Runstate.DISCONNECTING):
            return
        # As qemu.qmp: EOFError when an earlier call saw the server hang up.
        hung_up = state is Runstate.DISCONNECTING
        self._qmpcore_note_late()
        client.close()
        if hung_up:
            raise EOFError

    def __del__(self) -> None:
        client = getattr(self, "_qmpcore_client", None)
        state = getattr(self, "_qmpcore_state", None)
        if client is not None and state in (Runstate.RUNNING, Runstate.DISCONNECTING):
            self.logger.warning("QEMUMonitorProtocol object garbage collected without a prior call to close()")
            client.close()

    # -- helpers --------------------------------------------------------------

    def _qmpcore_check(self, required: Runstate) -> None:
        check_state("QMPClient", self._qmpcore_state, required)

    def _qmpcore_running(self) -> sync.SyncQMPClient:
        self._qmpcore_check(Runstate.RUNNING)
        assert self._qmpcore_client is not None
        return self._qmpcore_client

    def _qmpcore_hung_up(self) -> None:
        """The server ended the connection: commands now raise
        :class:`StateError` until :meth:`close`, as qemu.qmp's do."""
        if self._qmpcore_state is Runstate.RUNNING:
            self._qmpcore_state = Runstate.DISCONNECTING

    def _qmpcore_interrupted(self) -> QMPError:
        client = self._qmpcore_client
        if client is not None and client.closed:
            self._qmpcore_hung_up()
        return ExecInterruptedError("Disconnected")

    def _qmpcore_take_event(self, client: sync.SyncQMPClient) -> QMPMessage | None:
        """The oldest queued event, without waiting; None if there is none."""
        try:
            return client.pull_event(0).raw
        except _CoreTimeoutError:
            return None
        except ConnectionLost:
            self._qmpcore_hung_up()
            return None

    def _qmpcore_note_late(self) -> None:
        """Log the replies to abandoned commands dropped since the last look."""
        client = self._qmpcore_client
        if client is not None:
            self._qmpcore_late.note(self.logger, client.counters["late_replies"])
