"""An embedded QEMU-like QMP server and guest agent, for tests and benchmarks.

It answers like QEMU 7.2 and qemu-ga 7.2 byte for byte (greeting,
negotiation mode, JSON errors, envelope checks, argument checks, reply
member order, events with timestamps, ``pretty=on``, 0xFF handling, one
client at a time per socket), with pluggable command handlers and test
faults.  One process can simulate a thousand VMs.

One VM on one socket::

    async with serve_vm("/tmp/vm.qmp") as vm:
        vm.register("my-command", lambda call: {"ok": True})
        vm.emit_event("MY_EVENT", {"x": 1})
        vm.delay_command("query-status", 2.0)   # faults for tests

Many VMs (one socket each, optionally with a guest agent socket)::

    async with serve_vms(directory, 1000, agents=True) as vms:
        vms.qmp_paths, vms.qga_paths, vms[0].emit_event("STOP")

The same in a child process (the fleet benchmark keeps the server off the
client's CPU): :func:`start_in_subprocess` returns a :class:`ServerProcess`
whose ``vm(i)`` proxies the hooks.

Building blocks: :class:`SimulatedVM` and :class:`SimulatedGuestAgent` hold
commands, state and faults; :class:`QMPServer` and :class:`GuestAgentServer`
serve them on a unix path (mode 0600) or a ``(host, port)`` pair.

Clients are untrusted, and one must not cost the other VMs of the process
more than its share:

* **Output cap** (``output_cap``, default :data:`OUTPUT_CAP`, 16 MiB): it
  is checked before each reply is produced.  Past it, the client's further
  requests wait and its input is not read until its unread output drops to
  64 KiB; the server holds at most the cap plus one reply (or one 64 KiB
  step of error answers).
* **Fair share**: one turn of the event loop does at most one read (64 KiB)
  and a slice of work for a client (128 steps or 1 MiB of output, a step
  being one request or 64 KiB of error answers); the rest waits for the
  loop's next turn, with reading paused, so other clients run in between.
  Costly work (a read that held malformed input, a further slice of error
  answers, a step of a large request) is followed by a rest: that client
  is held back for the work's time per other client that read meanwhile
  (at most ``qmpcore.client.share.MAX_REST``, 0.25 s), so it gets its share of the loop while others
  are busy, and all of it while they are idle.
* **Garbage** is answered as QEMU does, one reply per parse error: the
  parser records a read's errors of any kinds in C, a few bytes each, and
  the replies are built as they are sent (one reply repeated for a run of
  identical errors), so no error costs a Python object.
* **Descriptors**: a VM holds at most ``max_fds`` (default
  :data:`MAX_FDS`, 128) descriptors from its clients (``getfd``,
  ``add-fd``); past it those commands fail with a ``GenericError`` naming
  the limit and descriptors that arrive are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator
from ssl import SSLContext
from typing import Any

from ..client import share
from ..client.limits import ensure_fd_limit
from ..client.share import load as _load
from ..errors import CommandError
from ..framing.rules import DEFER_SIZE
from ..protocol._qemu_output import Encoded, to_json
from ..protocol.qga_server import QGAServerProtocol
from ..protocol.qmp_server import NO_ID, QMPServerProtocol, Request, ServerProtocolBase, event_bytes, event_head
from ._process import ServerProcess, start_in_subprocess
from ._simulated import MAX_FDS, Call, Handler, SimulatedGuestAgent, SimulatedVM, Simulator, _Fault
from ._transport import Address, Connection, Listener, TLSLayer, _close_fds, bind_socket

__all__ = [
    "QMPServer",
    "GuestAgentServer",
    "SimulatedVM",
    "SimulatedGuestAgent",
    "SimulatedVMs",
    "Call",
    "Handler",
    "CommandError",
    "serve_vm",
    "serve_vms",
    "start_in_subprocess",
    "ServerProcess",
    "OUTPUT_CAP",
    "MAX_FDS",
]

logger = logging.getLogger("qmpcore.server")

_FLOOD_BATCH = 1024
_CLOSE_TIMEOUT = 1.0
#: Default cap on a client's unread output: past it, no further request of
#: that client is answered and its input is not read until it reads.
OUTPUT_CAP = 16 << 20
_MIN_OUTPUT_CAP = 1 << 20
# Bytes of answers the protocol produces on its own (parse errors) per step.
_STEP_OUTPUT = 64 << 10
# Fair share of the loop: steps (one request run, or one chunk of error
# answers) and bytes of output per turn before other clients run.
_SLICE_STEPS = 128
_SLICE_BYTES = 256 << 10
# Replies are gathered and written together up to this many bytes.
_WRITE_BATCH = 256 << 10
# Handler results that are not awaitable (no need to ask inspect).
_PLAIN_RESULTS = frozenset({Encoded, dict, list, str, int, bool, float, type(None)})


class _Session(asyncio.Protocol):
    """One client connection: bytes to the protocol object, requests to
    the simulator's handlers, answers back."""

    def __init__(self, endpoint: _Endpoint, protocol: ServerProtocolBase) -> None:
        self.endpoint = endpoint
        self.target: Simulator = endpoint.target
        self.protocol = protocol
        self.transport: Any = None
        self.closed = False
        self._fds: list[int] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._writable = asyncio.Event()
        self._writable.set()
        self._batching = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._produced = 0
        #: Bytes of replies and protocol output handed to the transport so far.
        self.written = 0
        self._continuation: asyncio.Handle | None = None
        self._stepping: asyncio.Handle | None = None  # a large request's next slice
        self._small_reads = False
        self._resting: asyncio.TimerHandle | None = None  # (see _rest)
        self._reads_seen = 0
        protocol.defer_frames(DEFER_SIZE)
        self._loop = asyncio.get_running_loop()
        self._lost = self._loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        _load[0] += 1
        self._reads_seen = _load[1]
        self._flush()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        _load[1] += 1
        self._reads_seen += 1  # (its own: not another client's)
        started = share.clock() if self._small_reads else 0.0
        try:
            protocol.receive_data(data)
        except Exception:
            logger.exception("internal error while parsing client input; closing the connection")
            self.drop()
            return
        if protocol.malformed is not self._small_reads:
            # A client that sent malformed input is read 4 KiB at a time
            # until it sends clean data (plain sockets; TLS reads records).
            self._small_reads = protocol.malformed
            read_small = getattr(self.transport, "read_small", None)
            if read_small is not None:
                read_small(self._small_reads)
        self._serve()
        if started:
            self._rest(started)

    def fds_received(self, fds: list[int]) -> None:
        # As in QEMU's chardev: new descriptors replace unclaimed ones.
        _close_fds(self._fds)
        if self.target.fds_held >= self.target.max_fds:
            # Over the simulator's limit: closed at once; the command that
            # wanted them fails with the limit's error.
            _close_fds(fds)
            fds = []
        self._fds = fds

    def take_fd(self) -> int | None:
        if not self._fds:
            return None
        fd, rest = self._fds[0], self._fds[1:]
        _close_fds(rest)
        self._fds = []
        return fd

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._continuation is None and self._resting is None:
            self._serve()  # requests held back by the output cap go on

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.transport is not None and not self.closed:
            _load[0] -= 1
        self.closed = True
        self._writable.set()
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        if self._continuation is not None:
            self._continuation.cancel()
            self._continuation = None
        if self._stepping is not None:
            self._stepping.cancel()
            self._stepping = None
        self._pending = []
        self._pending_size = 0
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        _close_fds(self._fds)
        self._fds = []
        if not self._lost.done():
            self._lost.set_result(None)
        self.endpoint._session_gone(self)

    # -- requests -----------------------------------------------------------

    def _serve(self) -> None:
        """Run the requests the protocol releases, one slice at a time.

        Before each step (one request, or one chunk of error answers) the
        client's unread output is checked against the endpoint's cap: past
        it, nothing more is produced until the client reads
        (:meth:`resume_writing`).  After a slice of steps or bytes, the
        rest waits for the loop's next turn, so other clients run first.
        Replies are gathered and leave in as few writes as possible.
        """
        self._continuation = None
        protocol = self.protocol
        transport = self.transport
        # (the protocol's own queues, read here to skip calls that would
        # find nothing to do: next_event, can_progress, data_to_send)
        ready = protocol._ready
        queue = protocol._queue
        out = protocol._out
        unsent = transport.get_write_buffer_size
        cap = self.endpoint.output_cap
        steps = 0
        self._produced = 0
        self._batching = True
        try:
            while (ready or queue) and not self.closed and not transport.is_closing():
                if unsent() + self._pending_size > cap:
                    break  # resume_writing() continues
                if steps >= _SLICE_STEPS or self._produced >= _SLICE_BYTES:
                    if protocol.can_progress and self._resting is None:  # (else _wake goes on)
                        self._continuation = self._loop.call_soon(self._continue)
                    break
                request = ready.popleft() if ready else protocol.next_event()
                if request is not None:
                    self._run(request)
                elif not protocol.can_progress:
                    break
                if out:
                    self._collect(protocol.data_to_send())
                steps += 1
        finally:
            self._batching = False
        if out:
            self._collect(protocol.data_to_send())
        if self._pending:
            self._write_pending()
        if protocol._stalled is not None and self._stepping is None and self._resting is None and not self.closed:
            self._stepping = self._loop.call_soon(self._step)
        self._update_reading()

    def _continue(self) -> None:
        """The next slice of answers (see :meth:`_serve`)."""
        started = share.clock()
        self._serve()
        self._rest(started)

    def _step(self) -> None:
        """One slice of a large request's decoding per turn of the loop
        (reading stays paused meanwhile: ``reading_paused``)."""
        self._stepping = None
        if self.closed:
            return
        started = share.clock()
        try:
            self.protocol.step()
        except Exception:
            logger.exception("internal error while parsing client input; closing the connection")
            self.drop()
            return
        self._serve()
        self._rest(started)

    def _rest(self, started: float) -> None:
        """After costly work begun at ``started``, hold this client's next
        read or slice back for its rest (:mod:`qmpcore.client.share`)."""
        delay, self._reads_seen = share.rest(started, self._reads_seen)
        if not delay or self.closed:
            return
        for handle in (self._continuation, self._stepping):
            if handle is not None:
                handle.cancel()
        self._continuation = self._stepping = None
        self._resting = self._loop.call_later(delay, self._wake)
        self.transport.pause_reading()

    def _wake(self) -> None:
        self._resting = None
        if self.protocol._stalled is not None:
            self._step()
        elif self.protocol.can_progress:
            self._continue()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        """Read while the request queue has room, no slice waits for its
        turn and the client keeps up with the output; like QEMU, a client
        that stops reading is not cut off at once, but its unread output is
        capped (bounded memory)."""
        transport = self.transport
        if transport is None or self.closed:
            return
        protocol = self.protocol
        if (
            protocol._stalled is not None
            or (protocol._queue and protocol.reading_paused)  # (an empty queue is never full)
            or self._continuation is not None
            or self._resting is not None
            or transport.get_write_buffer_size() > self.endpoint.output_cap
        ):
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _run(self, request: Request, faults: bool = True) -> None:
        target = self.target
        if faults and target._faults:
            fault = target.take_fault(request.command)
            if fault is not None:
                self._apply(fault, request)
                return
        command = request.command
        call = Call(command, request.arguments, request.id, request.oob, target, self)
        try:
            result = (target._handlers.get(command) or target.handler(command))(call)
        except Exception as exc:
            self._fail(request, exc)
            return
        if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
            self._spawn(self._finish_later(request, call, result))
        else:
            self._answer(request, call, result)

    def _apply(self, fault: _Fault, request: Request) -> None:
        if fault.kind == "delay":
            self._spawn(self._delayed(request, fault.seconds))
        elif fault.kind == "drop":
            partial = b""
            if fault.mid_frame:
                frame = self._reply_frame(request)
                partial = frame[: max(1, len(frame) // 2)]
            self.drop(partial=partial, reset=fault.reset)
        # "hang": the request is simply never answered.

    @staticmethod
    def _reply_frame(request: Request) -> bytes:
        if request.id is NO_ID:
            return b'{"return": {}}\r\n'
        return b'{"return": {}, "id": ' + to_json(request.id) + b"}\r\n"

    async def _delayed(self, request: Request, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.closed:
            self._run(request, faults=False)
            self._serve()

    async def _finish_later(self, request: Request, call: Call, awaitable: Any) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(request, exc)
        else:
            self._answer(request, call, value)
        self._serve()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer(self, request: Request, call: Call, value: Any) -> None:
        if self.closed:
            return
        try:
            reply = self.protocol.send(request, value)
        except TypeError as exc:  # the handler returned something JSON cannot hold
            logger.error("bad return value from %s handler: %s", request.command, exc)
            reply = self.protocol.send(request, error=CommandError("GenericError", f"internal error: {exc}"))
        if reply:  # (what _collect does)
            size = len(reply)
            self._pending.append(reply)
            self._pending_size += size
            self._produced += size
            if self._pending_size >= _WRITE_BATCH:
                self._write_pending()
        if call._after is not None:
            self._flush()
            call._after()

    def _fail(self, request: Request, exc: Exception) -> None:
        if self.closed:
            return
        if not isinstance(exc, CommandError):
            logger.exception("handler for %s failed", request.command, exc_info=exc)
            exc = CommandError("GenericError", str(exc) or type(exc).__name__)
        self._collect(self.protocol.send(request, error=exc))

    # -- output and hooks ---------------------------------------------------

    def _collect(self, data: bytes) -> None:
        """Hold ``data`` for the next write (written at once past a batch)."""
        if data:
            self._pending.append(data)
            self._pending_size += len(data)
            self._produced += len(data)
            if self._pending_size >= _WRITE_BATCH:
                self._write_pending()

    def _write_pending(self) -> None:
        pending = self._pending
        if pending and self.transport is not None:
            if len(pending) == 1:
                self.transport.write(pending[0])
            else:
                self.transport.writelines(pending)  # (no joined copy)
            self.written += self._pending_size
        pending.clear()
        self._pending_size = 0

    def _flush(self) -> None:
        self._collect(self.protocol.data_to_send())
        self._write_pending()

    def send_event(self, name: str, data: Any, stamp: float) -> None:
        send = getattr(self.protocol, "send_event", None)
        if send is not None and not self.closed and send(name, data, timestamp=stamp):
            if not self._batching:  # inside _serve, the reply's write takes it along
                self._flush()

    def send_raw(self, data: bytes) -> None:
        if not self.closed:
            self._flush()
            self.transport.write(data)

    def drop(self, *, partial: bytes = b"", reset: bool = False) -> None:
        """Close now; ``partial`` is written first (a frame cut short)."""
        if self.closed or self.transport is None:
            return
        self._flush()
        if partial:
            self.transport.write(partial)
        if reset:
            self.transport.abort(reset=True)
        else:
            self.transport.close()

    def close(self) -> None:
        """Close once the pending output is written (QEMU exiting)."""
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._lost

    async def flood(self, count: int, name: str, data: Any) -> int:
        """Write ``count`` events as fast as the client reads them."""
        protocol = self.protocol
        vm = self.target
        if not isinstance(protocol, QMPServerProtocol) or not protocol.negotiated or not isinstance(vm, SimulatedVM):
            return 0
        sent = 0
        tail = None if data is None else b', "data": ' + to_json(data) + b"}\r\n"
        while sent < count and not self.closed:
            if not self._writable.is_set():
                await self._writable.wait()
                continue
            batch = min(_FLOOD_BATCH, count - sent)
            stamp = vm.clock()  # one timestamp per batch
            if protocol.pretty:
                chunk = b"".join(
                    event_bytes(name, data if data is not None else {"seq": seq}, stamp, pretty=True)
                    for seq in range(sent, sent + batch)
                )
            elif tail is None:
                template = event_head(name, stamp) + b', "data": {"seq": %d}}\r\n'
                chunk = b"".join([template % seq for seq in range(sent, sent + batch)])
            else:
                chunk = (event_head(name, stamp) + tail) * batch
            self._flush()
            self.transport.write(chunk)
            sent += batch
            await asyncio.sleep(0)  # let replies and other clients through
        return sent


class _Endpoint:
    """A listening socket serving one simulator, one client at a time."""

    def __init__(
        self,
        target: Simulator,
        address: Address,
        *,
        mode: int = 0o600,
        ssl: SSLContext | None = None,
        output_cap: int = OUTPUT_CAP,
    ) -> None:
        if output_cap < _MIN_OUTPUT_CAP:
            raise ValueError(f"output_cap must be at least {_MIN_OUTPUT_CAP} bytes, not {output_cap}")
        self.target = target
        #: Unread output per client past which its requests wait (bytes).
        self.output_cap = output_cap
        self._requested = address
        self._mode = mode
        if ssl is not None and not isinstance(address, tuple):
            raise ValueError(f"{address!r}: TLS (ssl=) is only for TCP addresses")
        #: TLS (a server-side context) for every client, if set.
        self.ssl = ssl
        self._listener: Listener | None = None
        self._session: _Session | None = None
        self._address: Any = None
        self.accepted = 0
        if self not in target.endpoints:
            target.endpoints.append(self)

    @property
    def address(self) -> Any:
        """The unix path, or ``(host, port)`` with the port actually bound."""
        return self._address if self._address is not None else self._requested

    @property
    def serving(self) -> bool:
        return self._listener is not None

    @property
    def connected(self) -> bool:
        """True while a client is connected."""
        return self._session is not None and not self._session.closed

    async def start(self) -> _Endpoint:
        """Bind and listen (again, after :meth:`close` or ``quit``)."""
        if self._listener is None:
            loop = asyncio.get_running_loop()
            sock = bind_socket(self._requested, mode=self._mode)
            self._listener = Listener(loop, sock, self._accept)
            self._address = self._listener.address
        return self

    def stop_soon(self) -> None:
        """Stop listening now; close the client once its output is written."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._session is not None:
            self._session.close()

    async def close(self) -> None:
        """Stop listening, disconnect the client and wait until it is gone."""
        self.stop_soon()
        session = self._session
        if session is not None:
            try:
                await asyncio.wait_for(session.wait_closed(), _CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                session.drop()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- sessions -------------------------------------------------------------

    def _accept(self, sock: Any) -> None:
        assert self._listener is not None
        self._listener.pause()  # like QEMU: the next client waits in the backlog
        self.accepted += 1
        session = _Session(self, self._new_protocol())
        self._session = session
        Connection(asyncio.get_running_loop(), sock, session if self.ssl is None else TLSLayer(session, self.ssl))

    def _session_gone(self, session: _Session) -> None:
        if self._session is session:
            self._session = None
        if self._listener is not None:
            self._listener.resume()

    def _new_protocol(self) -> ServerProtocolBase:
        raise NotImplementedError

    # -- hooks ------------------------------------------------------------------

    def send_event(self, name: str, data: Any, stamp: float) -> None:
        if self._session is not None:
            self._session.send_event(name, data, stamp)

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` verbatim to the connected client, if any."""
        if self._session is not None:
            self._session.send_raw(data)

    def drop(self, *, mid_frame: bool = False, reset: bool = False) -> None:
        """Disconnect the client now (``mid_frame``: after half a frame)."""
        if self._session is not None:
            partial = b'{"timestamp": {"seconds": ' if mid_frame else b""
            self._session.drop(partial=partial, reset=reset)

    def flood(self, count: int, name: str, data: Any) -> asyncio.Future[int] | None:
        if self._session is None or self._session.closed:
            return None
        return asyncio.ensure_future(self._session.flood(count, name, data))

    async def wait_connected(self, timeout: float = 5.0) -> None:
        """Wait until a client is connected (for tests)."""

        async def poll() -> None:
            while not self.connected:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), timeout)


class QMPServer(_Endpoint):
    """A QMP monitor socket of a :class:`SimulatedVM`.

    ``pretty`` gives QEMU's ``pretty=on`` output; ``oob`` whether the
    greeting offers the ``oob`` capability.  Several servers may serve the
    same VM (QEMU with several monitors): events go to all of them.
    ``output_cap``: unread output (bytes) past which the client's further
    requests wait, unread, until it reads (at least 1 MiB).
    """

    def __init__(
        self,
        vm: SimulatedVM,
        address: Address,
        *,
        pretty: bool = False,
        oob: bool = True,
        mode: int = 0o600,
        ssl: SSLContext | None = None,
        output_cap: int = OUTPUT_CAP,
    ) -> None:
        super().__init__(vm, address, mode=mode, ssl=ssl, output_cap=output_cap)
        self.vm = vm
        self.pretty = pretty
        self.oob = oob

    def _new_protocol(self) -> ServerProtocolBase:
        return QMPServerProtocol(
            self.vm.commands,
            version=self.vm.version,
            capabilities=("oob",) if self.oob else (),
            pretty=self.pretty,
            output_limit=_STEP_OUTPUT,
        )


class GuestAgentServer(_Endpoint):
    """A guest agent socket (``qemu-ga -m unix-listen``) of a
    :class:`SimulatedGuestAgent`.  Like qemu-ga, one parser serves every
    client in turn, so a client's unfinished input outlives it."""

    def __init__(
        self,
        agent: SimulatedGuestAgent,
        address: Address,
        *,
        mode: int = 0o600,
        ssl: SSLContext | None = None,
        output_cap: int = OUTPUT_CAP,
    ) -> None:
        super().__init__(agent, address, mode=mode, ssl=ssl, output_cap=output_cap)
        self.agent = agent
        self._protocol = QGAServerProtocol(agent.commands, output_limit=_STEP_OUTPUT)

    def _new_protocol(self) -> ServerProtocolBase:
        self._protocol.connection_made()
        return self._protocol


# -- many VMs -------------------------------------------------------------------


class SimulatedVMs(list[SimulatedVM]):
    """The VMs of :func:`serve_vms`, in order, with their socket paths."""

    @property
    def qmp_paths(self) -> list[str]:
        return [vm.endpoints[0].address for vm in self]

    @property
    def qga_paths(self) -> list[str]:
        return [vm.agent.endpoints[0].address for vm in self if vm.agent is not None]


async def _start_vms(
    directory: str | os.PathLike[str],
    count: int,
    *,
    agents: bool = False,
    prefix: str = "vm",
    pretty: bool = False,
    output_cap: int = OUTPUT_CAP,
    **vm_options: Any,
) -> SimulatedVMs:
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    ensure_fd_limit(count * (4 if agents else 2), strict=False)
    vms = SimulatedVMs()
    try:
        for index in range(count):
            vm = SimulatedVM(f"{prefix}{index}", **vm_options)
            vms.append(vm)
            qmp_path = os.path.join(directory, f"{prefix}{index}.qmp")
            await QMPServer(vm, qmp_path, pretty=pretty, output_cap=output_cap).start()
            if agents:
                vm.agent = SimulatedGuestAgent(hostname=f"{prefix}{index}")
                qga_path = os.path.join(directory, f"{prefix}{index}.qga")
                await GuestAgentServer(vm.agent, qga_path, output_cap=output_cap).start()
    except BaseException:
        await _close_vms(vms)
        raise
    return vms


async def _close_vms(vms: list[SimulatedVM]) -> None:
    closing: list[Any] = []
    for vm in vms:
        targets: list[Simulator] = [vm]
        if vm.agent is not None:
            targets.append(vm.agent)
        for target in targets:
            closing.extend(endpoint.close() for endpoint in target.endpoints)
            target.close_fds()
    await asyncio.gather(*closing, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve_vms(
    directory: str | os.PathLike[str],
    count: int,
    *,
    agents: bool = False,
    prefix: str = "vm",
    pretty: bool = False,
    output_cap: int = OUTPUT_CAP,
    **vm_options: Any,
) -> AsyncIterator[SimulatedVMs]:
    """Serve ``count`` simulated VMs, one QMP socket each, in this process.

    Sockets are ``{directory}/{prefix}{i}.qmp`` (and ``.qga`` for a guest
    agent per VM when ``agents``); VM ``i`` is named ``{prefix}{i}``.
    ``output_cap`` is each client's unread-output cap (see
    :class:`QMPServer`).  Other keyword arguments go to :class:`SimulatedVM`
    (``max_fds``: descriptors a VM holds from clients).
    """
    vms = await _start_vms(
        directory, count, agents=agents, prefix=prefix, pretty=pretty, output_cap=output_cap, **vm_options
    )
    try:
        yield vms
    finally:
        await _close_vms(vms)


@contextlib.asynccontextmanager
async def serve_vm(
    address: Address,
    vm: SimulatedVM | None = None,
    *,
    pretty: bool = False,
    oob: bool = True,
    ssl: SSLContext | None = None,
    output_cap: int = OUTPUT_CAP,
    **vm_options: Any,
) -> AsyncIterator[SimulatedVM]:
    """Serve one simulated VM's QMP monitor on ``address`` (a unix path or
    ``(host, port)``); yields the :class:`SimulatedVM` (its first
    endpoint's ``address`` has the bound port for TCP).  ``ssl``, a
    server-side context, serves TLS (TCP only; with ``verify_mode``
    ``CERT_REQUIRED`` clients need a certificate, as QEMU's
    ``verify-peer=on``)."""
    if vm is None:
        vm = SimulatedVM(**vm_options)
    server = QMPServer(vm, address, pretty=pretty, oob=oob, ssl=ssl, output_cap=output_cap)
    await server.start()
    try:
        yield vm
    finally:
        await server.close()
        vm.close_fds()
