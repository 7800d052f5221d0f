"""Drop-in replacement for the standalone ``qmp.py`` (PyPI ``qmp`` 1.1.0 and
QEMU's ``python/qemu/qmp.py`` before qemu.qmp).

Change ``import qmp`` to ``from qmpcore.compat import qmp``.  Replies are
read by JSON structure instead of line by line, commands take the
:meth:`~QEMUMonitorProtocol.settimeout` time, and a connection stays usable
after a timeout.

::

    mon = QEMUMonitorProtocol("/run/vm1/qmp.sock")
    mon.connect()
    mon.cmd("query-status")        # {"return": {...}}
    mon.command("query-status")    # {...}, or QMPResponseError
    mon.close()
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any, Literal, TypeVar

from .. import errors as _core
from ..client import sync
from ..errors import CommandError, ConnectionLost
from ..errors import StateError as _CoreStateError
from ..errors import TimeoutError as _CoreTimeoutError
from ._bridge import MAX_FRAME_SIZE, RawCommand, listen_socket, plain_error, split_address
from ._events import DEFAULT_MAXSIZE

__all__ = [
    "QEMUMonitorProtocol",
    "QMPError",
    "QMPConnectError",
    "QMPCapabilitiesError",
    "QMPTimeoutError",
    "QMPProtocolError",
    "QMPResponseError",
    "QMPBadPortError",
    "QMPMessage",
    "QMPReturnValue",
]

#: A whole QMP message of any kind.
QMPMessage = dict[str, Any]
#: The ``return`` value of a command.
QMPReturnValue = object

_T = TypeVar("_T")


class QMPError(_core.QMPError):
    """Base class of this module's errors."""


class QMPConnectError(QMPError):
    """No usable greeting, or the connection broke while waiting for events."""


class QMPCapabilitiesError(QMPError):
    """``qmp_capabilities`` failed."""


class QMPTimeoutError(QMPError):
    """No event within the time given to :meth:`~QEMUMonitorProtocol.pull_event`."""


class QMPProtocolError(QMPError):
    """A reply with neither ``return`` nor ``error``."""


class QMPResponseError(QMPError):
    """:meth:`~QEMUMonitorProtocol.command` got an error reply (``reply``);
    ``str()`` is its ``desc``."""

    def __init__(self, reply: QMPMessage) -> None:
        try:
            desc = reply["error"]["desc"]
        except (KeyError, TypeError):
            desc = reply
        super().__init__(desc)
        self.reply = reply


class QMPBadPortError(QMPError):
    """:meth:`~QEMUMonitorProtocol.parse_address` found a non-numeric port."""


class QEMUMonitorProtocol:
    """A blocking QMP connection with the old ``qmp.py`` interface.

    :param address: unix socket path or ``(host, port)``.
    :param server: listen on ``address`` now; :meth:`accept` waits for QEMU.
    :param nickname: name used in log messages.
    """

    #: Logger for this class (``nickname`` makes a child).
    logger = logging.getLogger("QMP")

    def __init__(self, address: Any, server: bool = False, nickname: str | None = None) -> None:
        self._events: list[QMPMessage] = []
        self._address = address
        self._timeout: float | None = None
        self._client: sync.SyncQMPClient | None = None
        self._listener: socket.socket | None = None
        self._nickname = nickname
        if nickname:
            self.logger = logging.getLogger("QMP").getChild(nickname)
        if server:
            self._listener = listen_socket(address)

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, exc_traceback: TracebackType | None
    ) -> Literal[False]:
        self.close()
        return False

    @classmethod
    def parse_address(cls, address: str) -> Any:
        """``"host:port"`` becomes ``(host, port)``; anything else is a path.

        :raise QMPBadPortError: when the port is not a number.
        """
        return split_address(address, QMPBadPortError)

    # -- connecting -----------------------------------------------------------

    def connect(self, negotiate: bool = True) -> QMPMessage | None:
        """Connect and read the greeting; with ``negotiate``, also run
        ``qmp_capabilities`` and return the greeting.

        :raise OSError: when the socket cannot connect.
        :raise QMPConnectError: when no greeting comes.
        :raise QMPCapabilitiesError: when negotiation fails.
        """
        return self._start(self._address, None, negotiate)

    def accept(self, timeout: float | None = 15.0) -> QMPMessage | None:
        """Wait up to ``timeout`` seconds (None: forever) for QEMU to connect
        to the listening socket, then negotiate.

        :raise TimeoutError: (``socket.timeout``) when nobody connects in time.
        """
        listener = self._listener
        if listener is None:
            raise QMPConnectError("accept() needs a QEMUMonitorProtocol made with server=True")
        listener.settimeout(timeout)
        sock, _ = listener.accept()
        self._listener = None
        listener.close()
        return self._start(None, sock, True)

    def _connect_timeout(self) -> float | None:
        return self._timeout if self._timeout is not None else sync.CONNECT_TIMEOUT

    def _start(self, address: Any, sock: socket.socket | None, negotiate: bool) -> QMPMessage | None:
        """Connect (to ``address`` or over ``sock``), read the greeting and
        negotiate if asked; return the greeting when negotiated."""
        try:
            client = sync.connect_sync(
                address,
                sock=sock,
                negotiate=False,
                timeout=self._connect_timeout(),
                max_frame_size=MAX_FRAME_SIZE,
                event_queue=DEFAULT_MAXSIZE,
            )
        except (_core.ProtocolError, ConnectionLost) as exc:
            raise QMPConnectError(str(exc)) from None
        except _CoreTimeoutError:
            raise TimeoutError("timed out") from None  # the socket's own
        except OSError as exc:
            raise plain_error(exc) from None
        self._client = client
        if not negotiate:
            return None
        try:
            client.negotiate(timeout=self._timeout)
        except (CommandError, ConnectionLost) as exc:
            raise QMPCapabilitiesError(str(exc)) from None
        except _CoreTimeoutError:
            raise TimeoutError("timed out") from None
        return client.greeting

    # -- commands -------------------------------------------------------------

    def cmd_obj(self, qmp_cmd: QMPMessage) -> QMPMessage | None:
        """Send a whole command message; return the whole reply, or None if
        the connection is gone.  Any JSON value may serve as ``id``."""
        return self._request(RawCommand.parse(qmp_cmd, check_id=False), qmp_cmd)

    def cmd(self, name: str, args: dict[str, Any] | None = None, cmd_id: Any = None) -> QMPMessage | None:
        """Run command ``name`` with ``args`` and ``cmd_id`` (each only if
        given); return the whole reply as :meth:`cmd_obj` does."""
        raw = RawCommand(name, args or None, False, bool(cmd_id), cmd_id or None)
        return self._request(raw, raw)

    def _request(self, raw: RawCommand, shown: Any) -> QMPMessage | None:
        client = self._connected()
        self.logger.debug(">>> %s", shown)
        try:
            if raw.oob:
                value = client.execute_oob(raw.command, raw.arguments, timeout=self._timeout)
            else:
                value = client.execute(raw.command, raw.arguments, timeout=self._timeout)
            resp = raw.reply(value)
        except CommandError as err:
            resp = raw.reply(error=err)
        except (ConnectionLost, _CoreStateError):
            return None
        except _CoreTimeoutError:
            raise TimeoutError("timed out") from None  # the socket's own
        self.logger.debug("<<< %s", resp)
        return resp

    def command(self, cmd: str, **kwds: Any) -> QMPReturnValue:
        """Run ``cmd`` with ``kwds`` as arguments; return its value.

        :raise QMPResponseError: for an error reply.
        """
        ret = self.cmd(cmd, kwds)
        if ret is None:
            raise QMPConnectError("Unexpected empty reply from server")
        if "error" in ret:
            raise QMPResponseError(ret)
        if "return" not in ret:
            raise QMPProtocolError(f"'return' key not found in QMP response '{ret}'")
        return ret["return"]

    # -- events ---------------------------------------------------------------

    def _collect(self) -> None:
        """Move every event received so far into the cache (bounded: the
        oldest are dropped beyond ``DEFAULT_MAXSIZE``)."""
        client = self._client
        if client is None:
            return
        events = self._events
        while True:
            event = _take_event(client)
            if event is None:
                break
            events.append(event)
        if len(events) > DEFAULT_MAXSIZE:
            del events[:-DEFAULT_MAXSIZE]

    def _wait_event(self, wait: bool | float) -> None:
        """Wait for one event (``wait`` as for :meth:`pull_event`) and cache it."""
        client = self._client
        if client is None:
            raise QMPConnectError("Error while reading from socket")
        timeout = None if wait is True else float(wait)
        try:
            self._events.append(client.pull_event(timeout).raw)
        except _CoreTimeoutError:
            raise QMPTimeoutError("Timeout waiting for event") from None
        except ConnectionLost:
            raise QMPConnectError("Error while reading from socket") from None

    def pull_event(self, wait: bool | float = False) -> QMPMessage | None:
        """The oldest event not yet pulled, or None.

        :param wait: False: do not wait; True: wait as long as it takes; a
            number: wait up to that many seconds.
        :raise QMPTimeoutError: when a timed wait runs out.
        :raise QMPConnectError: when the connection ends while waiting.
        """
        if not self._events:
            client = self._client
            event = None if client is None else _take_event(client)
            if event is None:
                self._collect()
                if not self._events and wait:
                    self._wait_event(wait)
                if not self._events:
                    return None
                return self._events.pop(0)
            return event
        return self._events.pop(0)

    def get_events(self, wait: bool | float = False) -> list[QMPMessage]:
        """The list of events received so far (the cache itself: it is not
        emptied; see :meth:`clear_events`)."""
        self._collect()
        if not self._events and wait:
            self._wait_event(wait)
        return self._events

    def clear_events(self) -> None:
        """Forget every event received so far."""
        self._collect()
        self._events = []

    # -- the socket -----------------------------------------------------------

    def close(self) -> None:
        """Close the connection (and the listening socket)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._client is not None:
            self._client.close()

    def settimeout(self, timeout: float | None) -> None:
        """Timeout of each command and of connecting (seconds, None for none)."""
        self._timeout = timeout

    def get_sock_fd(self) -> int:
        """The socket's file descriptor (-1 before connecting)."""
        if self._client is not None:
            return self._client.fileno()
        return self._listener.fileno() if self._listener is not None else -1

    def is_scm_available(self) -> bool:
        """True when file descriptors can be passed (a unix socket)."""
        if self._client is not None:
            return self._client.address.is_unix
        return not isinstance(self._address, tuple)

    def _connected(self) -> sync.SyncQMPClient:
        if self._client is None:
            raise QMPConnectError("not connected: call connect() or accept() first")
        return self._client


def _take_event(client: sync.SyncQMPClient) -> QMPMessage | None:
    """The oldest event the client holds, without waiting; None if none."""
    try:
        return client.pull_event(0).raw
    except (_CoreTimeoutError, ConnectionLost):
        return None
