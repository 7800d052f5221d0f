"""Drop-in replacement for ``qemu.qmp`` 0.0.6 (QEMU's asyncio QMP library).

Change ``from qemu.qmp import QMPClient`` to
``from qmpcore.compat.qemu_qmp import QMPClient``; the rest of the code
stays.  Underneath, :class:`QMPClient` drives a :class:`qmpcore.QMPClient`:
frames are read by JSON structure (QEMU's ``pretty=on`` output, two
messages on one line and replies up to 64 MiB all work), and event queues
are bounded.  The deliberate differences are listed in the README.

::

    qmp = QMPClient("vm1")
    await qmp.connect("/run/vm1/qmp.sock")
    with qmp.listener("STOP") as stop:
        await qmp.execute("stop")
        await stop.get()
    await qmp.disconnect()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from ssl import SSLContext
from typing import Any

from ..client import aio
from ..errors import CommandError, ConnectionLost
from ..errors import StateError as _CoreStateError
from ._bridge import (
    MAX_FRAME_SIZE,
    command_message,
    connect_error,
    execute_error,
    greeting_or_error,
    listen_socket,
)
from ._errors import (
    BadReplyError,
    ConnectError,
    DeserializationError,
    ExecInterruptedError,
    ExecuteError,
    GreetingError,
    ListenerError,
    NegotiationError,
    ProtocolError,
    QMPError,
    ServerParseError,
    StateError,
    UnexpectedTypeError,
)
from ._events import EventFilter, EventListener, EventNames, Events
from ._message import Message
from ._models import ErrorInfo, ErrorResponse, Greeting, QMPGreeting
from ._state import InternetAddrT, Runstate, SocketAddrT, UnixAddrT, check_state

__all__ = (
    # the names qemu.qmp exports
    "QMPClient",
    "Message",
    "EventListener",
    "Runstate",
    "QMPError",
    "StateError",
    "ConnectError",
    "ExecuteError",
    "ExecInterruptedError",
    "SocketAddrT",
    # and those of its submodules that callers import
    "ProtocolError",
    "ListenerError",
    "GreetingError",
    "NegotiationError",
    "DeserializationError",
    "UnexpectedTypeError",
    "ServerParseError",
    "BadReplyError",
    "Greeting",
    "QMPGreeting",
    "ErrorResponse",
    "ErrorInfo",
    "EventNames",
    "EventFilter",
    "InternetAddrT",
    "UnixAddrT",
)

#: How long the greeting and negotiation may take.
CONNECT_TIMEOUT = aio.CONNECT_TIMEOUT
#: How long disconnect() lets buffered writes drain before aborting.
CLOSE_TIMEOUT = aio.CLOSE_TIMEOUT


class QMPClient(Events):
    """A QMP client connection with qemu.qmp's interface.

    :param name: nickname for logging (``qmpcore.compat.qemu_qmp.<name>``).
    :param readbuflen: qemu.qmp's read limit; frames up to the larger of
        this and 64 MiB are accepted.
    """

    logger = logging.getLogger(__name__)

    #: qemu.qmp's default read limit (10 MiB).
    _readbuflen = 10 * 1024 * 1024

    def __init__(self, name: str | None = None, readbuflen: int = _readbuflen) -> None:
        self._name: str | None = None
        self.name = name
        self.readbuflen = readbuflen
        #: Wait for the greeting when connecting (see :attr:`negotiate`).
        self.await_greeting = True
        #: Run ``qmp_capabilities`` when connecting (enabling ``oob`` if offered).
        self.negotiate = True
        self._greeting: Greeting | None = None
        self._runstate = Runstate.IDLE
        self._runstate_changed: asyncio.Event | None = None
        self._client: aio.QMPClient | None = None
        self._stream: aio.EventStream | None = None
        self._pump: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None  # start_server()
        self._server_ssl: SSLContext | None = None  # start_server(ssl=)
        self._closing = False  # disconnect() in progress
        self._lost: BaseException | None = None  # why the server side ended
        Events.__init__(self)

    def __repr__(self) -> str:
        tokens = [] if self.name is None else [f"name={self.name!r}"]
        tokens.append(f"runstate={self.runstate.name}")
        return f"<{type(self).__name__} {' '.join(tokens)}>"

    # -- attributes -----------------------------------------------------------

    @property
    def name(self) -> str | None:
        """Nickname of this connection, used in log messages."""
        return self._name

    @name.setter
    def name(self, name: str | None) -> None:
        base = logging.getLogger(__name__)
        self.logger = base.getChild(name) if name else base
        self._name = name

    @property
    def greeting(self) -> Greeting | None:
        """The server's greeting, once a connection read one."""
        return self._greeting

    @property
    def runstate(self) -> Runstate:
        """Where the session stands."""
        return self._runstate

    async def runstate_changed(self) -> Runstate:
        """Wait for :attr:`runstate` to change; return the new one."""
        await self._runstate_event.wait()
        return self._runstate

    @property
    def _runstate_event(self) -> asyncio.Event:
        if self._runstate_changed is None:
            self._runstate_changed = asyncio.Event()
        return self._runstate_changed

    def _set_state(self, state: Runstate) -> None:
        if state is self._runstate:
            return
        self.logger.debug("Transitioning from '%s' to '%s'.", self._runstate, state)
        self._runstate = state
        event = self._runstate_event
        event.set()
        event.clear()

    def _require(self, required: Runstate) -> None:
        check_state(type(self).__name__, self._runstate, required)

    # -- connecting -----------------------------------------------------------

    async def connect(self, address: SocketAddrT | socket.socket, ssl: SSLContext | None = None) -> None:
        """Connect to a QMP server (unix path, ``(host, port)`` or a connected
        socket), read its greeting and negotiate capabilities.

        :raise StateError: unless :attr:`runstate` is ``IDLE``.
        :raise ConnectError: when the connection or the session fails.
        """
        self._require(Runstate.IDLE)
        await self._begin_connecting()
        if isinstance(address, socket.socket):
            await self._open_session(None, address, ssl=ssl)
        else:
            await self._open_session(address, ssl=ssl)

    async def start_server(self, address: SocketAddrT, ssl: SSLContext | None = None) -> None:
        """Listen on ``address`` for the server to connect; :meth:`accept` waits
        for it.  ``runstate`` becomes ``CONNECTING``."""
        self._require(Runstate.IDLE)
        await self._begin_connecting()
        self._server_ssl = ssl  # the TLS server side, for the client that connects
        async with self._guard("Failed to establish connection"):
            self._listener = listen_socket(address)
            self._listener.setblocking(False)

    async def accept(self) -> None:
        """Accept the connection :meth:`start_server` waits for, then greet
        and negotiate as :meth:`connect` does."""
        self._require(Runstate.CONNECTING)
        if self._listener is None:
            raise QMPError("Cannot call accept() before start_server().")
        async with self._guard("Failed to establish connection"):
            listener = self._listener
            try:
                sock, _ = await asyncio.get_running_loop().sock_accept(listener)
            finally:
                self._listener = None
                listener.close()
        await self._open_session(None, sock, ssl=self._server_ssl)

    async def start_server_and_accept(self, address: SocketAddrT, ssl: SSLContext | None = None) -> None:
        """:meth:`start_server` then :meth:`accept`."""
        await self.start_server(address, ssl)
        await self.accept()

    async def _begin_connecting(self) -> None:
        self._greeting = None
        self._lost = None
        self._set_state(Runstate.CONNECTING)
        await asyncio.sleep(0)  # let runstate watchers see CONNECTING

    async def _open_session(
        self, address: SocketAddrT | None, sock: socket.socket | None = None, ssl: SSLContext | None = None
    ) -> None:
        negotiate = self.negotiate
        async with self._guard("Failed to establish session"):
            try:
                client = await aio.connect(
                    address,
                    sock=sock,
                    negotiate=negotiate,
                    oob=negotiate,
                    timeout=CONNECT_TIMEOUT,
                    max_frame_size=max(self.readbuflen, MAX_FRAME_SIZE),
                    ssl=ssl,
                )
            except Exception as exc:
                raise connect_error(exc) from exc
            self._client = client
            if self.await_greeting or negotiate:
                self._greeting = greeting_or_error(client.greeting)
            self._stream = client.events(maxsize=self.events.maxsize)
        self._pump = asyncio.ensure_future(self._pump_events(client, self._stream))
        self._set_state(Runstate.RUNNING)
        await asyncio.sleep(0)  # let runstate watchers see RUNNING

    @contextlib.asynccontextmanager
    async def _guard(self, emsg: str) -> AsyncIterator[None]:
        """Roll back to IDLE on failure; wrap errors in :class:`ConnectError`."""
        try:
            yield
        except BaseException as err:
            self.logger.error("%s: %s", emsg, err)
            await self.disconnect()
            if isinstance(err, ConnectError) or not isinstance(err, Exception):
                raise
            raise ConnectError(emsg, err) from err

    # -- disconnecting --------------------------------------------------------

    async def disconnect(self) -> None:
        """Close the connection and return to ``IDLE``.

        Commands still waiting fail with :class:`ExecInterruptedError`.  If
        the server had already hung up, the reason is raised here
        (``EOFError``), as qemu.qmp does.
        """
        self._set_state(Runstate.DISCONNECTING)
        self._closing = True
        client, self._client = self._client, None
        pump, self._pump = self._pump, None
        listener, self._listener = self._listener, None
        try:
            if listener is not None:
                listener.close()
            if client is not None:
                await client.close(CLOSE_TIMEOUT)
            if pump is not None:
                await pump
        finally:
            self._stream = None
            self._closing = False
            error, self._lost = self._lost, None
            self._set_state(Runstate.IDLE)
        if error is not None:
            raise error

    async def _pump_events(self, client: aio.QMPClient, stream: aio.EventStream) -> None:
        """Deliver events to the listeners until the connection ends."""
        try:
            async for event in stream:
                self._dispatch(Message._from_dict(event.raw))
        except ConnectionLost:
            pass
        if not self._closing and self._runstate is Runstate.RUNNING:
            self.logger.info("The server closed the connection.")
            lost = EOFError()
            lost.__cause__ = client.connection_error
            self._lost = lost
            self._set_state(Runstate.DISCONNECTING)

    async def _drain_events(self) -> None:
        """Deliver the events that came with the last reply before returning
        it (they are queued already, so this never waits)."""
        stream = self._stream
        while stream is not None and len(stream):
            self._dispatch(Message._from_dict((await stream.get()).raw))

    # -- commands -------------------------------------------------------------

    @classmethod
    def make_execute_msg(cls, cmd: str, arguments: Mapping[str, object] | None = None, oob: bool = False) -> Message:
        """A command :class:`Message` for :meth:`execute_msg`."""
        return command_message(cmd, arguments, oob)

    async def execute(self, cmd: str, arguments: Mapping[str, object] | None = None, oob: bool = False) -> object:
        """Run ``cmd`` and return its ``return`` value.

        :raise ExecuteError: for an error reply.
        :raise ExecInterruptedError: when the connection ends first.
        :raise StateError: unless :attr:`runstate` is ``RUNNING``.
        """
        self._require(Runstate.RUNNING)
        client = self._client
        args = arguments if arguments is None or type(arguments) is dict else dict(arguments)
        try:
            if oob:
                value = await client.execute_oob(cmd, args)  # type: ignore[union-attr]
            else:
                value = await client.execute(cmd, args)  # type: ignore[union-attr]
        except CommandError as err:
            await self._drain_events()
            raise execute_error(err, cmd, arguments, oob) from None
        except (ConnectionLost, _CoreStateError) as err:
            raise _interrupted(client, err) from None
        if self._stream is not None and len(self._stream):
            await self._drain_events()
        return value

    async def execute_msg(self, msg: Message) -> object:
        """Run a command :class:`Message` (``execute`` or ``exec-oob``)."""
        self._require(Runstate.RUNNING)
        if not ("execute" in msg or "exec-oob" in msg):
            raise ValueError("Requires 'execute' or 'exec-oob' message")
        oob = "exec-oob" in msg
        cmd = msg["exec-oob" if oob else "execute"]
        arguments = msg.get("arguments")
        return await self.execute(cmd, arguments, oob=oob)  # type: ignore[arg-type]

    def send_fd_scm(self, fd: int) -> None:
        """Pass ``fd`` to the server over the unix socket (SCM_RIGHTS), for a
        following ``getfd`` or ``add-fd``.  ``fd`` is not closed."""
        self._require(Runstate.RUNNING)
        client = self._client
        assert client is not None
        if not client.address.is_unix:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        client.send_fd_nowait(fd)


def _interrupted(client: Any, err: BaseException) -> QMPError:
    """The error for a command that could not complete."""
    if isinstance(err, _CoreStateError) and client is not None and not client.closed:
        return QMPError(str(err))  # e.g. exec-oob without oob negotiated
    return ExecInterruptedError("Disconnected")
