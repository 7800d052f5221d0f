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
from collections.abc import AsyncIterator, Callable, Mapping
from ssl import SSLContext
from typing import Any

from ..client import aio
from ..errors import CommandError, ConnectionLost
from ..errors import StateError as _CoreStateError
from ._bridge import (
    MAX_FRAME_SIZE,
    LateReplies,
    RawCommand,
    broken_send,
    command_message,
    connect_error,
    exec_id,
    execute_error,
    greeting_or_error,
    listen_socket,
    log_connect_failure,
    tls_arguments,
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
from ._protocol import AsyncProtocol, InternetAddrT, Runstate, SocketAddrT, UnixAddrT, check_state
from ._util import exception_summary

__all__ = [
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
]
#: The names the ``qemu.qmp`` package itself exports (its ``__all__`` when
#: :mod:`qmpcore.compat.importer` maps it here).
_PACKAGE_NAMES = tuple(__all__)
# and those of its submodules that callers import
__all__ += [
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
]

#: How long the greeting and negotiation may take.
CONNECT_TIMEOUT = aio.CONNECT_TIMEOUT
#: How long disconnect() lets buffered writes drain before aborting.
CLOSE_TIMEOUT = aio.CLOSE_TIMEOUT
#: Ids of abandoned commands remembered for the "Unknown ID" warning.


class QMPClient(AsyncProtocol[Message], Events):
    """A QMP client connection with qemu.qmp's interface.

    :param name: nickname for logging (``qmpcore.compat.qemu_qmp.<name>``).
    :param readbuflen: qemu.qmp's read limit; frames up to the larger of
        this and 64 MiB are accepted.

    Subclasses may override ``_cb_outbound`` and ``_cb_inbound`` (every
    message passes them, as in qemu.qmp); the adapter's own internals are
    named ``_qmpcore_*`` so that no subclass attribute collides with them.
    """

    logger = logging.getLogger(__name__)
    _qmpcore_logger_base = __name__

    #: qemu.qmp's default read limit (10 MiB).
    _readbuflen = 10 * 1024 * 1024

    def __init__(self, name: str | None = None, readbuflen: int = _readbuflen) -> None:
        AsyncProtocol.__init__(self, name)
        self.readbuflen = readbuflen
        #: Wait for the greeting when connecting (see :attr:`negotiate`).
        self.await_greeting = True
        #: Run ``qmp_capabilities`` when connecting (enabling ``oob`` if offered).
        self.negotiate = True
        self._greeting: Greeting | None = None
        self._execute_id = 0  # as qemu.qmp's: numbers the "__qmp#" ids
        self._qmpcore_client: aio.QMPClient | None = None
        self._qmpcore_unlisten: Callable[[], None] | None = None  # removes the event callback
        self._qmpcore_listener: socket.socket | None = None  # start_server()
        self._qmpcore_closing = False  # disconnect() in progress
        self._qmpcore_lost: BaseException | None = None  # why the server side ended
        self._qmpcore_ids_in_use: set[object] = set()  # caller ids of _raw() in flight
        self._qmpcore_late = LateReplies()
        self._qmpcore_server_ssl: SSLContext | None = None  # start_server(ssl=): QEMU connects as the TLS client
        Events.__init__(self)

    # -- attributes -----------------------------------------------------------

    @property
    def greeting(self) -> Greeting | None:
        """The server's greeting, once a connection read one."""
        return self._greeting

    def _qmpcore_require(self, required: Runstate) -> None:
        check_state(type(self).__name__, self._runstate, required)

    # -- connecting -----------------------------------------------------------

    async def connect(self, address: SocketAddrT | socket.socket, ssl: SSLContext | None = None) -> None:
        """Connect to a QMP server (unix path, ``(host, port)`` or a connected
        socket), read its greeting and negotiate capabilities.

        ``ssl`` is passed to qmpcore's connect (TLS needs a qmpcore that
        supports it; otherwise :class:`NotImplementedError` says so).

        :raise StateError: unless :attr:`runstate` is ``IDLE``.
        :raise ConnectError: when the connection or the session fails.
        """
        self._qmpcore_require(Runstate.IDLE)
        tls = tls_arguments(ssl, aio.connect)
        await self._qmpcore_begin()
        if isinstance(address, socket.socket):
            await self._qmpcore_open(None, address, tls)
        else:
            await self._qmpcore_open(address, None, tls)

    async def start_server(self, address: SocketAddrT, ssl: SSLContext | None = None) -> None:
        """Listen on ``address`` for the server to connect; :meth:`accept` waits
        for it.  ``runstate`` becomes ``CONNECTING``."""
        self._qmpcore_require(Runstate.IDLE)
        await self._qmpcore_begin()
        self._qmpcore_server_ssl = ssl
        async with self._qmpcore_guard("Failed to establish connection"):
            self._qmpcore_listener = listen_socket(address)
            self._qmpcore_listener.setblocking(False)

    async def accept(self) -> None:
        """Accept the connection :meth:`start_server` waits for, then greet
        and negotiate as :meth:`connect` does."""
        self._qmpcore_require(Runstate.CONNECTING)
        if self._qmpcore_listener is None:
            raise QMPError("Cannot call accept() before start_server().")
        async with self._qmpcore_guard("Failed to establish connection"):
            listener = self._qmpcore_listener
            try:
                sock, _ = await asyncio.get_running_loop().sock_accept(listener)
            finally:
                self._qmpcore_listener = None
                listener.close()
        tls = {"ssl": self._qmpcore_server_ssl} if self._qmpcore_server_ssl is not None else {}
        await self._qmpcore_open(None, sock, tls)

    async def start_server_and_accept(self, address: SocketAddrT, ssl: SSLContext | None = None) -> None:
        """:meth:`start_server` then :meth:`accept`."""
        await self.start_server(address, ssl)
        await self.accept()

    async def _qmpcore_begin(self) -> None:
        self._greeting = None
        self._qmpcore_lost = None
        self._set_state(Runstate.CONNECTING)
        await asyncio.sleep(0)  # let runstate watchers see CONNECTING

    async def _qmpcore_open(self, address: SocketAddrT | None, sock: socket.socket | None, tls: dict[str, Any]) -> None:
        negotiate = self.negotiate
        async with self._qmpcore_guard("Failed to establish session"):
            try:
                client = await aio.connect(
                    address,
                    sock=sock,
                    negotiate=negotiate,
                    oob=negotiate,
                    timeout=CONNECT_TIMEOUT,
                    max_frame_size=max(self.readbuflen, MAX_FRAME_SIZE),
                    event_queue=0,  # no backlog: the listeners hold the events
                    **tls,
                )
            except Exception as exc:
                error = connect_error(exc)
                raise error from error.exc
            self._qmpcore_client = client
            self._qmpcore_late.reset()
            if self.await_greeting or negotiate:
                self._greeting = greeting_or_error(client.greeting)
            if self._qmpcore_hooked:
                self._qmpcore_replay_handshake(client, negotiate)
        self._set_state(Runstate.RUNNING)
        # Events reach the listeners from qmpcore's callback, as they are
        # read: in wire order, before the reply they preceded is returned.
        self._qmpcore_unlisten = client.add_event_listener(self._qmpcore_on_event, on_close=self._qmpcore_on_close)
        await asyncio.sleep(0)  # let runstate watchers see RUNNING

    def _qmpcore_replay_handshake(self, client: aio.QMPClient, negotiate: bool) -> None:
        """Show the hooks the greeting and the negotiation qmpcore performed
        (in qemu.qmp's form; what the hooks return is not used)."""
        self._cb_inbound(Message._from_dict(dict(client.greeting or {})))
        if negotiate:
            arguments = {"enable": ["oob"]} if "oob" in client.capabilities else {}
            self._cb_outbound(command_message("qmp_capabilities", arguments, False))
            self._cb_inbound(Message._from_dict({"return": {}}))

    @contextlib.asynccontextmanager
    async def _qmpcore_guard(self, emsg: str) -> AsyncIterator[None]:
        """Roll back to IDLE on failure; wrap errors in :class:`ConnectError`."""
        try:
            yield
        except BaseException as err:
            if isinstance(err, ConnectError):
                log_connect_failure(self.logger, err)
            else:
                self.logger.error("%s: %s", emsg, exception_summary(err))
            with contextlib.suppress(Exception):
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
        self._qmpcore_closing = True
        self._qmpcore_note_late()
        client, self._qmpcore_client = self._qmpcore_client, None
        unlisten, self._qmpcore_unlisten = self._qmpcore_unlisten, None
        listener, self._qmpcore_listener = self._qmpcore_listener, None
        try:
            if listener is not None:
                listener.close()
            if unlisten is not None:
                unlisten()
            if client is not None:
                await client.close(CLOSE_TIMEOUT)
        finally:
            self._qmpcore_closing = False
            error, self._qmpcore_lost = self._qmpcore_lost, None
            self._set_state(Runstate.IDLE)
        if error is not None:
            raise error

    def _qmpcore_on_event(self, event: aio.Event) -> None:
        self._qmpcore_deliver(event.raw)
        if self._qmpcore_late.abandoned:
            self._qmpcore_note_late()

    def _qmpcore_on_close(self, error: BaseException | None) -> None:
        """The connection ended: unless disconnect() ended it, the server
        did, and the next disconnect() raises EOFError (as qemu.qmp's)."""
        self._qmpcore_note_late()
        if self._qmpcore_closing or self._runstate is not Runstate.RUNNING:
            return
        # DEBUG, not qemu.qmp's INFO: after "quit" this is the normal path.
        self.logger.debug("The server closed the connection: %s", error or "end of stream")
        self._qmpcore_lost = EOFError()
        self._set_state(Runstate.DISCONNECTING)

    def _qmpcore_deliver(self, raw: dict[str, Any]) -> None:
        msg = Message._from_dict(raw)
        if self._qmpcore_hooked:
            msg = self._cb_inbound(msg)
        self._qmpcore_dispatch(msg)

    def _qmpcore_gave_up(self, wire_id: object) -> None:
        """A command was abandoned: its reply, if it comes, is dropped."""
        self._qmpcore_late.abandoned.append(wire_id)

    def _qmpcore_note_late(self) -> None:
        """Log the replies to abandoned commands dropped since the last look."""
        client = self._qmpcore_client
        if client is not None:
            self._qmpcore_late.note(self.logger, client.counters["late_replies"])

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
        self._qmpcore_require(Runstate.RUNNING)
        if self._qmpcore_hooked:
            return await self.execute_msg(command_message(cmd, arguments, oob))
        client = self._qmpcore_client
        assert client is not None
        number = self._execute_id
        self._execute_id = number + 1
        args = arguments if arguments is None or type(arguments) is dict else dict(arguments)
        try:
            if oob:
                value = await client.execute_oob(cmd, args)
            else:
                value = await client.execute(cmd, args)
        except CommandError as err:
            raise execute_error(err, cmd, arguments, oob, exec_id(number)) from None
        except (ConnectionLost, _CoreStateError) as err:
            raise _interrupted(client, err) from None
        except asyncio.CancelledError:
            self._qmpcore_gave_up(exec_id(number))
            raise
        if self._qmpcore_late.abandoned:
            self._qmpcore_note_late()
        return value

    async def execute_msg(self, msg: Message) -> object:
        """Run a command :class:`Message` (``execute`` or ``exec-oob``)."""
        self._qmpcore_require(Runstate.RUNNING)
        if not ("execute" in msg or "exec-oob" in msg):
            raise ValueError("Requires 'execute' or 'exec-oob' message")
        if not self._qmpcore_hooked:
            oob = "exec-oob" in msg
            cmd = msg["exec-oob" if oob else "execute"]
            return await self.execute(cmd, msg.get("arguments"), oob=oob)  # type: ignore[arg-type]
        sent = Message(msg)  # the id goes on this copy, not on the caller's
        reply = await self._qmpcore_exchange(sent, assign_id=True)
        if "error" in reply:
            try:
                response = ErrorResponse(reply)
            except (KeyError, TypeError) as err:
                raise BadReplyError("QMP error reply is malformed", reply, sent) from err
            raise ExecuteError(response, sent, reply)
        if "return" not in reply:
            raise BadReplyError("QMP reply is missing a 'error' or 'return' member", reply, sent)
        return reply["return"]

    async def _raw(self, msg: Message | Mapping[str, object] | bytes, assign_id: bool = True) -> Message:
        """Send a whole command message and return the whole reply (an error
        reply is returned, not raised), as qemu.qmp's ``_raw`` does.

        ``assign_id`` gives the message a ``"__qmp#..."`` id; otherwise its
        own ``id`` (a string not starting with ``__qmp#``, not in use) or
        none is used.  The message may hold ``execute`` or ``exec-oob``,
        ``arguments`` and ``id``; anything else raises ``ValueError`` here
        (qmpcore sends commands only), where QEMU would answer an error.
        """
        self._qmpcore_require(Runstate.RUNNING)
        msg = Message(msg)
        wire_id = msg.get("id")
        if not assign_id and "id" in msg:
            if not isinstance(wire_id, str):
                raise TypeError(f"ID ('{wire_id}') must be a string.")
            if wire_id.startswith("__qmp#"):
                raise ValueError(f"ID ('{wire_id}') must not start with '__qmp#'.")
        if not assign_id and wire_id in self._qmpcore_ids_in_use:
            raise ValueError(f"ID '{wire_id}' is in-use and cannot be used.")
        return await self._qmpcore_exchange(msg, assign_id)

    async def _qmpcore_exchange(self, msg: Message, assign_id: bool) -> Message:
        """Send ``msg`` through the outbound hook, return the reply after the
        inbound hook (with the id the caller sees)."""
        if assign_id:
            msg["id"] = exec_id(self._execute_id)
            self._execute_id += 1
        msg = self._cb_outbound(msg)
        raw = RawCommand.parse(msg, check_id=False)
        key = raw.id if raw.has_id and isinstance(raw.id, str) else None
        self._qmpcore_ids_in_use.add(key)
        client = self._qmpcore_client
        assert client is not None
        try:
            if raw.oob:
                reply = raw.reply(await client.execute_oob(raw.command, raw.arguments))
            else:
                reply = raw.reply(await client.execute(raw.command, raw.arguments))
        except CommandError as err:
            reply = raw.reply(error=err)
        except (ConnectionLost, _CoreStateError) as err:
            raise _interrupted(client, err) from None
        except asyncio.CancelledError:
            self._qmpcore_gave_up(raw.id if raw.has_id else None)
            raise
        finally:
            self._qmpcore_ids_in_use.discard(key)
        self._qmpcore_note_late()
        return self._cb_inbound(Message._from_dict(reply))

    def send_fd_scm(self, fd: int) -> None:
        """Pass ``fd`` to the server over the unix socket (SCM_RIGHTS), for a
        following ``getfd`` or ``add-fd``.  ``fd`` is not closed."""
        self._qmpcore_require(Runstate.RUNNING)
        client = self._qmpcore_client
        assert client is not None
        if not client.address.is_unix:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        try:
            client.send_fd_nowait(fd)
        except (ConnectionLost, _CoreStateError) as err:
            raise broken_send(err) from None


def _interrupted(client: Any, err: BaseException) -> QMPError:
    """The error for a command that could not complete."""
    if isinstance(err, _CoreStateError) and client is not None and not client.closed:
        return QMPError(str(err))  # e.g. exec-oob without oob negotiated
    return ExecInterruptedError("Disconnected")
