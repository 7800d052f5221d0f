"""One QMP monitor connection shared by many clients.

QEMU's monitor serves one client at a time.  :class:`Proxy` holds the one
connection and serves any number of clients on its own listeners (unix or
TCP, optionally TLS).  Each client sees a QEMU monitor: QEMU's greeting,
its own capabilities negotiation (answered by the proxy, as QEMU would),
every event, and replies carrying its own ids.  Commands go to QEMU under
the upstream client's ids, so two clients' ids can never cross.

Per client, the sans-IO :class:`~qmpcore.protocol.qmp_server.QMPServerProtocol`
does QEMU's side of the conversation (framing, JSON errors, negotiation
mode, one in-band command at a time, reading paused while the queue is
full); the proxy only forwards what it releases.  Output a client leaves
unread is bounded (``client_buffer`` bytes): a client that falls behind is
cut off and counted, and never slows the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from ..client.address import AddressLike, parse_address
from ..client.aio import QMPClient, connect
from ..client.fleet import Backoff
from ..client.peerlog import PeerLog
from ..errors import CommandError, ConnectionLost, QMPError
from ..framing.rules import DEFER_SIZE
from ..protocol._qapi import CommandInfo
from ..protocol._qemu_output import encode_qmp
from ..protocol.events import Event
from ..protocol.qmp_server import QMPServerProtocol, Request
from ..server._transport import Connection, Listener, TLSLayer, _close_fds, bind_socket
from .policy import ALLOW_ALL, Policy
from .record import Recorder

__all__ = ["Proxy", "ProxyListener", "ProxyStats"]

log = logging.getLogger("qmpcore.proxy")

# Commands that take a descriptor passed with SCM_RIGHTS.
_FD_COMMANDS = frozenset({"getfd", "add-fd"})
_WARN_INTERVAL = 10.0  # at most one warning about slow clients per interval
# exec-oob commands of one client in flight before its input stops being read
# (QEMU runs them at once; without a bound a client could pile up any number).
_MAX_OOB = 8


@dataclass(frozen=True)
class ProxyListener:
    """Where the proxy serves clients, and what they may do there.

    ``address`` is a unix socket path or ``(host, port)`` (port 0 picks a
    free one); ``policy`` which commands are forwarded; ``ssl`` a
    server-side context serving TLS (TCP only); ``mode`` the unix socket's
    permissions.
    """

    address: Any
    policy: Policy = ALLOW_ALL
    ssl: SSLContext | None = None
    mode: int = 0o600


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of a proxy's counters (:attr:`Proxy.stats`)."""

    clients: int
    """Clients connected now."""
    accepted: int
    commands: int
    """Commands forwarded to QEMU."""
    in_flight: int
    """Commands forwarded and not answered yet."""
    refused: int
    """Commands a listener's policy refused."""
    events: int
    """Events received from QEMU (each sent to every negotiated client)."""
    slow_clients: int
    """Clients cut off because their unread output passed ``client_buffer``."""
    upstream_connected: bool
    reconnects: int
    """Connections to QEMU re-established after one was lost."""


class _ProxyServerProtocol(QMPServerProtocol):
    """QEMU's side of one client's conversation, forwarding every command its policy permits."""

    def __init__(self, policy: Policy, on_refused: Any, **options: Any) -> None:
        super().__init__({}, **options)
        self.policy = policy
        self._on_refused = on_refused

    def _lookup(self, name: str) -> CommandInfo | None:
        if name == "qmp_capabilities" or not self.negotiated:
            return super()._lookup(name)
        # QEMU checks the name, oob support and arguments; the proxy forwards.
        return CommandInfo(name, allow_oob=True)

    def _handle_locally(self, request: Request) -> bool:
        if super()._handle_locally(request):
            return True
        if self.policy.permits(request.command):
            return False
        self._write_error(request.id, "GenericError", self.policy.refusal(request.command))
        self._on_refused()
        return True


class _Session:
    """One client: its protocol object, its transport, its commands in flight."""

    def __init__(self, proxy: Proxy, number: int, listener: ProxyListener) -> None:
        self.proxy = proxy
        self.number = number
        self.listener = listener
        self.proto = _ProxyServerProtocol(
            listener.policy,
            proxy._count_refused,
            version=proxy._version,
            capabilities=proxy._capabilities,
            max_frame_size=proxy.max_frame_size,
        )
        self.proto.defer_frames(DEFER_SIZE)  # (large requests: a slice per turn of the loop)
        self.transport: Any = None
        self.closed = False
        self._fds: list[int] = []
        self._paused = False
        self._oob_pending = 0
        self._stepping: asyncio.Handle | None = None

    # -- protocol interface (called by the transport) ---------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.proxy._sessions.add(self)
        recorder = self.proxy._recorder
        if recorder is not None:
            recorder.note(self.number, f"connected on {self.listener.address}")
        self._flush()  # the greeting

    def data_received(self, data: bytes) -> None:
        recorder = self.proxy._recorder
        if recorder is not None:
            recorder.client(self.number, "C", data)
        try:
            self.proto.receive_data(data)
        except Exception:  # pragma: no cover - a bug, not the client's input
            log.exception("client %d: internal error while parsing its input; disconnecting it", self.number)
            self.transport.abort()
            return
        self._run()

    def fds_received(self, fds: list[int]) -> None:
        # As QEMU's chardev does: new descriptors replace unclaimed ones.
        _close_fds(self._fds)
        self._fds = fds

    def pause_writing(self) -> None:
        pass  # unread output is bounded by client_buffer instead

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._stepping is not None:
            self._stepping.cancel()
            self._stepping = None
        self.proxy._sessions.discard(self)
        _close_fds(self._fds)
        self._fds = []
        recorder = self.proxy._recorder
        if recorder is not None:
            recorder.note(self.number, "disconnected")

    # -- forwarding -------------------------------------------------------------

    def _run(self) -> None:
        """Forward every request the protocol released; write what it answered itself."""
        proto = self.proto
        while self._oob_pending < _MAX_OOB and (request := proto.next_event()) is not None:
            self._forward(request)
        self._flush()
        if proto.decoding and self._stepping is None and not self.closed:
            self._stepping = asyncio.get_running_loop().call_soon(self._step)
        paused = proto.reading_paused or self._oob_pending >= _MAX_OOB
        if paused != self._paused and self.transport is not None:
            self._paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _step(self) -> None:
        """One slice of a large request's decoding per turn of the loop."""
        self._stepping = None
        if self.closed:
            return
        try:
            self.proto.step()
        except Exception:  # pragma: no cover - a bug, not the client's input
            log.exception("client %d: internal error while parsing its input; disconnecting it", self.number)
            self.transport.abort()
            return
        self._run()

    def _forward(self, request: Request) -> None:
        upstream = self.proxy._upstream
        command = request.command
        arguments = request.arguments or None
        fds: list[int] = []
        try:
            if upstream is None:
                raise ConnectionLost("QEMU is not connected to the proxy")
            if request.oob:
                fut: asyncio.Future[Any] = asyncio.ensure_future(upstream.execute_oob(command, arguments))
            elif command in _FD_COMMANDS and self._fds and upstream.address.is_unix:
                fds, self._fds = self._fds, []
                fut = asyncio.ensure_future(upstream.execute(command, arguments, fds=fds))
            else:
                fut = upstream.submit(command, arguments)
        except QMPError as exc:
            _close_fds(fds)
            self.proto.send_error(request, "GenericError", f"proxy: {exc}")
            return
        self.proxy._commands += 1
        self.proxy._in_flight += 1
        if request.oob:
            self._oob_pending += 1
        fut.add_done_callback(functools.partial(self._answered, request, fds))

    def _answered(self, request: Request, fds: list[int], fut: asyncio.Future[Any]) -> None:
        _close_fds(fds)  # QEMU has its own copies once the command went out
        self.proxy._in_flight -= 1
        if request.oob:
            self._oob_pending -= 1
        if fut.cancelled():
            return
        exc = fut.exception()
        if self.closed:
            return  # the client hung up; nobody else sees this reply
        if exc is None:
            self.proto.send_return(request, fut.result())
        elif isinstance(exc, CommandError):
            self.proto.send_error(request, exc.error_class, exc.desc)
        elif isinstance(exc, ConnectionLost):
            return  # QEMU went away: every client is being disconnected
        else:
            self.proto.send_error(request, "GenericError", f"proxy: {exc}")
        self._run()

    def send_event(self, data: bytes) -> None:
        """Queue one event (QEMU's bytes); clients still negotiating get none, as from QEMU."""
        if self.proto.negotiated and not self.closed:
            self.proto.send_raw(data)
            self._flush()

    def _flush(self) -> None:
        out = self.proto.data_to_send()
        if not out or self.closed or self.transport is None:
            return
        recorder = self.proxy._recorder
        if recorder is not None:
            recorder.client(self.number, "S", out)
        transport = self.transport
        transport.write(out)
        if transport.get_write_buffer_size() > self.proxy.client_buffer:
            self.proxy._cut_off(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Proxy:
    """Serve one QMP monitor (``target``) to many clients on ``listeners``.

    ``target`` is the monitor's address (unix path or ``(host, port)``;
    ``ssl``/``server_hostname`` connect to it with TLS, as
    :func:`~qmpcore.connect` does).  ``listeners`` are
    :class:`ProxyListener` objects or plain addresses (allow-all policy).
    ``client_buffer`` bounds each client's unread output in bytes;
    ``max_clients`` the clients served at once; ``max_frame_size`` each
    message a client sends (QEMU takes 64 MiB; a proxy serving many
    clients holds less for each, and answers a longer one as QEMU does).  ``record`` is a file that
    receives every message each way (:mod:`qmpcore.proxy.record`).
    ``command_timeout`` bounds the wait for QEMU's reply to each command
    (None: as long as QEMU takes; a client may hang up meanwhile); a client
    whose command timed out gets a ``GenericError`` saying so.  When
    QEMU goes away, clients are disconnected, listeners stop accepting
    (new clients wait in the backlog) and the proxy reconnects with
    ``backoff`` until QEMU is back.

    ::

        async with Proxy("/run/vm1/qmp.sock", ["/run/vm1/proxy.sock",
                         ProxyListener("/run/vm1/ro.sock", READ_ONLY)]):
            ...
    """

    def __init__(
        self,
        target: AddressLike,
        listeners: Iterable[ProxyListener | AddressLike],
        *,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        client_buffer: int = 1 << 20,
        max_clients: int = 1024,
        max_frame_size: int = 1 << 20,
        record: str | os.PathLike[str] | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float | None = None,
    ) -> None:
        self.target = target
        self._target = parse_address(target)
        self.listeners = [spec if isinstance(spec, ProxyListener) else ProxyListener(spec) for spec in listeners]
        if not self.listeners:
            raise ValueError("a proxy needs at least one listener")
        if client_buffer < 1 or max_clients < 1:
            raise ValueError("client_buffer and max_clients must be positive")
        self.client_buffer = client_buffer
        self.max_clients = max_clients
        self.max_frame_size = max_frame_size
        self.backoff = backoff or Backoff(initial=0.05, maximum=2.0)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._tls: dict[str, Any] = {"ssl": ssl, "server_hostname": server_hostname}
        self._record_path = record
        self._recorder: Recorder | None = None
        self._upstream: QMPClient | None = None
        self._version: dict[str, Any] = {}
        self._capabilities: tuple[str, ...] = ()
        self._listeners: list[Listener] = []
        self._sessions: set[_Session] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._numbers = 0
        self._accepted = 0
        self._commands = 0
        self._in_flight = 0
        self._refused = 0
        self._events = 0
        self._slow = 0
        self._reconnects = 0
        self._slow_log = PeerLog(log, "proxy", interval=_WARN_INTERVAL)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> Proxy:
        """Connect to QEMU (raising if that fails), then listen."""
        if self._record_path is not None and self._recorder is None:
            self._recorder = Recorder(self._record_path, f"qmpcore proxy recording of {self._target}")
        await self._connect_upstream()
        loop = asyncio.get_running_loop()
        try:
            for spec in self.listeners:
                if spec.ssl is not None and not isinstance(spec.address, tuple):
                    raise ValueError(f"{spec.address}: TLS is only for TCP listeners")
                sock = bind_socket(spec.address, mode=spec.mode)
                self._listeners.append(Listener(loop, sock, functools.partial(self._accept, spec)))
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop listening, disconnect every client and QEMU."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            self._reconnect_task = None
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for session in list(self._sessions):
            session.close()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.close()
        await asyncio.sleep(0)  # let the transports report their end
        if self._recorder is not None:
            self._recorder.close()

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def addresses(self) -> list[Any]:
        """Where each listener listens (unix path, or ``(host, port)`` as bound)."""
        return [listener.address for listener in self._listeners]

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return ProxyStats(
            clients=len(self._sessions),
            accepted=self._accepted,
            commands=self._commands,
            in_flight=self._in_flight,
            refused=self._refused,
            events=self._events,
            slow_clients=self._slow,
            upstream_connected=self._upstream is not None,
            reconnects=self._reconnects,
        )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once QEMU is connected (after a loss, once the proxy reconnected)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- QEMU -------------------------------------------------------------------

    async def _connect_upstream(self) -> None:
        client = await connect(
            self.target,
            oob=True,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            event_queue=0,
            **self._tls,
        )
        greeting = (client.greeting or {}).get("QMP", {})
        self._version = greeting.get("version") or {}
        self._capabilities = tuple(greeting.get("capabilities") or ())
        self._upstream = client
        self._connected.set()
        client.add_event_listener(self._on_event, on_close=functools.partial(self._upstream_closed, client))
        for listener in self._listeners:
            listener.resume()
        log.debug("proxy: connected to %s", client.address)

    def _on_event(self, event: Event) -> None:
        self._events += 1
        data = encode_qmp(event.raw)
        for session in list(self._sessions):
            session.send_event(data)

    def _upstream_closed(self, client: QMPClient, error: BaseException | None) -> None:
        if self._upstream is not client:
            return
        self._upstream = None
        self._connected.clear()
        for listener in self._listeners:
            listener.pause()  # new clients wait in the backlog until QEMU is back
        for session in list(self._sessions):
            session.close()
        if not self._closing:
            log.debug("proxy: lost %s (%s); reconnecting", client.address, error or "closed")
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1
            try:
                await self._connect_upstream()
            except (OSError, QMPError, asyncio.TimeoutError) as exc:
                log.debug("proxy: %s not back yet: %s", self._target, exc)
                continue
            self._reconnects += 1
            return

    # -- clients ----------------------------------------------------------------

    def _accept(self, spec: ProxyListener, sock: socket.socket) -> None:
        if self._upstream is None or len(self._sessions) >= self.max_clients:
            sock.close()  # QEMU is away, or too many clients: hang up at once
            return
        self._accepted += 1
        self._numbers += 1
        session = _Session(self, self._numbers, spec)
        Connection(asyncio.get_running_loop(), sock, session if spec.ssl is None else TLSLayer(session, spec.ssl))

    def _count_refused(self) -> None:
        self._refused += 1

    def _cut_off(self, session: _Session) -> None:
        self._slow += 1
        session.closed = True  # nothing more is queued for it
        session.transport.abort()
        self._slow_log.warning(
            "client %d read too slowly (more than %d bytes unread); disconnected it (%d so far)",
            session.number,
            self.client_buffer,
            self._slow,
        )
