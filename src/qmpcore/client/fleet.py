"""Many VMs, one event loop: :class:`Fleet`.

A fleet manager watches and commands thousands of QEMU monitors from one
process.  :class:`Fleet` keeps one connection per VM: it connects a few at
a time, notices at once when a connection dies and reconnects with
exponential backoff and jitter, so a VM that restarts on the same socket
comes back without the caller doing anything.  Commands to many VMs run
concurrently, each with its own timeout, so a frozen, dead or slow VM
costs the others nothing.  An idle VM costs one client and a few small
objects: no task, no event object, no buffer of its own.

::

    async with qmpcore.Fleet(paths, command_timeout=2) as fleet:
        results = await fleet.execute_all("query-status")
        for vm, result in results.items():
            if isinstance(result, Exception):
                ...                        # ConnectionLost, TimeoutError, CommandError
        async for vm, event in fleet.events("SHUTDOWN"):
            ...
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import random
import socket
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import (
    Any,
    Union,
)

from ..errors import CommandError, ConnectionLost, QMPError, StateError
from ..errors import TimeoutError as QMPTimeoutError
from .address import parse_address
from .core import Stats
from .diagnose import connect_error
from .disposal import discard
from .limits import ensure_fd_limit
from .tls import check_tls

__all__ = [
    "Fleet",
    "Backoff",
    "FleetStats",
    "FleetEvents",
    "ensure_fd_limit",
]

Address = Union[str, "os.PathLike[str]", tuple[str, int]]
Result = Any
"""A command's return value, or the exception object it failed with."""

#: Default byte budget of each :meth:`Fleet.events` stream.
EVENT_STREAM_BYTES = 64 << 20
#: Default byte budget of all of a fleet's event streams together.
EVENT_BUDGET = 256 << 20

_UNSET: Any = object()


def _arguments(arguments: dict[str, Any] | None, args: Any) -> dict[str, Any] | None:
    """``arguments``, or the deprecated ``args=`` spelling of it."""
    if args is _UNSET:
        return arguments
    if arguments is not None:
        raise TypeError("pass arguments= or args=, not both")
    warnings.warn("args= is deprecated, use arguments=", DeprecationWarning, stacklevel=3)
    return args  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Backoff:
    """Delays between connection attempts: exponential, capped, jittered.

    Attempt ``n`` (from 0) waits ``min(maximum, initial * factor**n)``,
    shortened by a random fraction of up to ``jitter`` so that VMs that
    failed together do not retry together.  ``n`` goes back to 0 only once
    a connection proved healthy: a command was answered on it, or it stayed
    up ``healthy_after`` seconds; so a VM that greets and hangs up at once
    is retried on this schedule, not as fast as it accepts.
    """

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5
    healthy_after: float = 10.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("Backoff needs 0 <= initial <= maximum and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff jitter must be between 0 and 1")
        if self.healthy_after < 0:
            raise ValueError("Backoff healthy_after must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


#: The counters of a fleet: the same :class:`~qmpcore.client.core.Stats` as a client's.
FleetStats = Stats


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    """A future that has already failed with ``exc``."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


def _release(waiter: asyncio.Future[None], _done: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _all_done(futures: list[asyncio.Future[Any]]) -> None:
    """Wait until every one of ``futures`` is done.

    Not ``gather``'s callback and loop handle per future: one callback on the
    first future still pending, and when it fires, on the next one still
    pending; replies that come together cost one wake-up.  Cancelled, it
    cancels the futures still pending (as ``gather`` does).
    """
    loop = asyncio.get_running_loop()
    i, n = 0, len(futures)
    try:
        while True:
            while i < n and futures[i].done():
                i += 1
            if i == n:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            futures[i].add_done_callback(functools.partial(_release, waiter))
            await waiter
    except asyncio.CancelledError:
        for fut in futures:
            fut.cancel()
        raise


def _outcome(fut: asyncio.Future[Any]) -> Result:
    """A done future's result, or the exception it failed with (``gather(return_exceptions=True)``)."""
    if fut.cancelled():
        return asyncio.CancelledError()
    exc = fut.exception()
    return fut.result() if exc is None else exc


async def _open_socket(address: Address) -> socket.socket:
    """A connected non-blocking stream socket to ``address``."""
    addr = parse_address(address)
    sock = socket.socket(addr.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, addr.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class FleetEvents:
    """A merged, bounded stream of ``(vm, event)`` from every VM of a fleet.

    When the consumer falls behind, the oldest queued events are dropped
    and counted (:attr:`dropped`, and the fleet's ``events_dropped``); memory
    never grows past ``maxsize`` events nor ``max_bytes`` bytes (an event
    costing the bytes of its frame; the newest event is always kept), and
    all streams of a fleet together stay within its ``event_budget``.
    Iteration ends when the fleet closes or :meth:`close` is called.
    """

    def __init__(self, fleet: Fleet, names: Iterable[str], maxsize: int, max_bytes: int = EVENT_STREAM_BYTES) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._fleet = fleet
        self._names = frozenset(names)
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._costs: collections.deque[int] = collections.deque()
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        #: What the queued events cost, in bytes.
        self.nbytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        #: Events dropped from this stream because it was full.
        self.dropped = 0

    def _offer(self, vm: str, event: Any, cost: int) -> int:
        """Queue one event (``cost`` bytes) if it matches; return how many were dropped."""
        if self._names and event.name not in self._names:
            return 0
        queue = self._queue
        dropped = 0
        if len(queue) >= self._maxsize:
            dropped += self._drop()
        queue.append((vm, event))
        self._costs.append(cost)
        self.nbytes += cost
        self._fleet._event_bytes += cost
        while len(queue) > 1 and (self.nbytes > self._max_bytes or self._fleet._event_bytes > self._fleet.event_budget):
            dropped += self._drop()
        self._wake()
        return dropped

    def _drop(self) -> int:
        cost = self._costs.popleft()
        self._took(cost)
        self.dropped += 1
        discard(self._queue.popleft()[1], cost)  # (a large one: a slice per turn)
        return 1

    def _took(self, cost: int) -> None:
        self.nbytes -= cost
        self._fleet._event_bytes -= cost

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Stop the stream; queued events are still delivered first."""
        if not self._closed:
            self._closed = True
            self._fleet._subscribers.discard(self)
            self._wake()

    def __del__(self) -> None:
        if getattr(self, "nbytes", 0):  # give the fleet's budget back
            self._fleet._event_bytes -= self.nbytes

    def __aiter__(self) -> FleetEvents:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._took(self._costs.popleft())
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> tuple[str, Any]:
        """The next ``(vm, event)``; :class:`~qmpcore.TimeoutError` after ``timeout``."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise QMPTimeoutError(f"no event within {timeout} s") from None


class _Member:
    """One VM of the fleet: its address, its connection, and retry state.

    No task or event object per VM while it is connected: the connection's
    end is noticed through its event listener, and retries are timer
    handles, so an idle VM costs little more than its client.
    """

    __slots__ = (
        "fleet",
        "name",
        "address",
        "client",
        "last_error",
        "tried",
        "ever_connected",
        "_attempt",
        "_answered",
        "task",
        "timer",
        "connected_at",
        "base",
    )

    def __init__(self, name: str, address: Address, fleet: Fleet | None = None) -> None:
        self.fleet = fleet
        self.name = name
        self.address = address
        self.client: Any = None
        self.last_error: BaseException | None = None
        self.tried = False  # the first attempt has finished
        self.ever_connected = False
        self._attempt = 0  # attempts since a connection last proved healthy
        self._answered = 0  # the live client's replies when _attempt was set
        self.task: asyncio.Task[None] | None = None  # a connection attempt under way
        self.timer: asyncio.TimerHandle | None = None  # the next attempt
        self.connected_at = 0.0  # loop time the live connection was made
        self.base = 0  # commands the live connection had issued when it was made

    def on_event(self, event: Any, cost: int) -> None:
        """The live client's listener: forward ``event`` (``cost`` bytes) to the fleet."""
        assert self.fleet is not None
        self.fleet._deliver(self.name, event, cost)

    def on_close(self, error: BaseException | None) -> None:
        """The live client's close listener (only one client listened to at a time)."""
        assert self.fleet is not None
        if self.client is not None:
            self.fleet._lost(self, self.client)

    @property
    def attempt(self) -> int:
        """Connection attempts since a connection last proved healthy.

        0 once the live connection answered a command (read from the
        client's reply count: no callback per command).
        """
        client = self.client
        if client is not None and client._answered != self._answered:
            return 0
        return self._attempt

    @attempt.setter
    def attempt(self, value: int) -> None:
        self._attempt = value
        client = self.client
        self._answered = 0 if client is None else client._answered


class Fleet:
    """Connections to many VMs in one event loop.

    ``addresses`` is a mapping of VM name to address, or an iterable of
    addresses (each then named by its path or ``host:port``).  An address is
    a unix socket path or a ``(host, port)`` tuple.

    ``connect_timeout`` bounds each connection attempt (connect, greeting and
    negotiation); ``command_timeout`` is the default per-VM timeout of
    commands; ``max_concurrency`` caps simultaneous socket connects (a VM
    that accepts and then stays silent holds no slot: greetings are awaited
    concurrently, each within ``connect_timeout``).
    ``reconnect`` is True (default :class:`Backoff`), a :class:`Backoff`, or
    False to try each VM once and never reconnect.  ``guest_agent=True``
    talks to guest agents instead of QMP monitors.  ``event_maxsize`` and
    ``event_max_bytes`` are the default bounds of each :meth:`events`
    stream, ``event_budget`` bounds all of them together, in bytes.
    ``max_frame_size`` bounds each frame a VM may send (QEMU's 64 MiB by
    default).  ``ssl`` connects every VM with TLS (TCP addresses only;
    ``server_hostname`` as for :func:`~qmpcore.connect`, default each
    address's host).
    ``validate=True`` checks commands against each VM's schema before
    sending (see :func:`qmpcore.connect`); a bad command fails with QEMU's
    :class:`~qmpcore.CommandError` without a round trip.
    """

    def __init__(
        self,
        addresses: Mapping[str, Address] | Iterable[Address],
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        max_concurrency: int = 64,
        reconnect: bool | Backoff = True,
        guest_agent: bool = False,
        event_maxsize: int = 10_000,
        event_max_bytes: int = EVENT_STREAM_BYTES,
        event_budget: int = EVENT_BUDGET,
        max_frame_size: int = 64 << 20,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        validate: bool = False,
    ) -> None:
        if isinstance(addresses, Mapping):
            pairs = [(str(name), addr) for name, addr in addresses.items()]
        else:
            pairs = [(str(parse_address(addr)), addr) for addr in addresses]
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError("two VMs of the fleet have the same name")
        if connect_timeout <= 0 or command_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if min(event_max_bytes, event_budget, max_frame_size) < 1:
            raise ValueError("event byte budgets and frame limits must be positive")
        for _, addr in pairs:
            check_tls(parse_address(addr), ssl, server_hostname)
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._pairs = pairs
        self._members: dict[str, _Member] = {}
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_concurrency = max_concurrency
        self.backoff: Backoff | None = Backoff() if reconnect is True else (reconnect or None)
        self.guest_agent = guest_agent
        self.event_maxsize = event_maxsize
        self.event_max_bytes = event_max_bytes
        self.event_budget = event_budget
        self.max_frame_size = max_frame_size
        self._event_bytes = 0  # what every stream's queued events cost
        self.validate = validate and not guest_agent
        self._subscribers: set[FleetEvents] = set()
        self._slots: asyncio.Semaphore | None = None
        # Futures of the callers in _wait_until, woken on every VM state change.
        self._wakers: list[asyncio.Future[None]] = []
        self._untried = len(pairs)
        self._connected = 0
        self._started = False
        self._closing = False
        self._in_flight = 0
        self._commands = 0
        self._timeouts = 0
        self._reconnects = 0
        self._events_received = 0
        self._events_dropped = 0

    # -- lifecycle --------------------------------------------------------

    @property
    def vms(self) -> list[str]:
        """Names of every VM, in the order given."""
        return [name for name, _ in self._pairs]

    async def start(self, *, wait: bool = True) -> None:
        """Begin connecting to every VM, ``max_concurrency`` at a time.

        With ``wait`` (default) return once every VM has been tried once:
        connected, or failed and now retried in the background (see
        :meth:`wait_connected`).  Raises :class:`OSError` when the open-file
        limit cannot hold this many connections.
        """
        if self._started:
            raise StateError("the fleet was already started")
        ensure_fd_limit(len(self._pairs))
        self._started = True
        self._slots = asyncio.Semaphore(self.max_concurrency)
        for name, address in self._pairs:
            member = self._members[name] = _Member(name, address, self)
            self._launch(member)
        if wait:
            await self._wait_until(lambda: self._untried == 0, None)

    async def wait_connected(self, vms: Iterable[str] | None = None, *, timeout: float | None = None) -> bool:
        """Wait until the given VMs (default: all) are connected.

        Returns False when ``timeout`` ran out first.
        """
        if vms is None:
            return await self._wait_until(lambda: self._connected == len(self._members), timeout)
        members = [self._member(vm) for vm in vms]
        return await self._wait_until(lambda: all(m.client is not None for m in members), timeout)

    async def _wait_until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait for ``ready()`` to hold, rechecking whenever a VM's state changes."""
        if not self._started:
            raise StateError("the fleet is not started")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not ready():
            if self._closing:
                return False
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            # (a future registered before yielding: a change between the
            # check above and the wait is not missed, as it could be with
            # an Event set and cleared in one go)
            waker = loop.create_future()
            self._wakers.append(waker)
            try:
                await asyncio.wait_for(waker, left)
            except asyncio.TimeoutError:
                return False
            finally:
                if waker in self._wakers:
                    self._wakers.remove(waker)
        return True

    def _pulse(self) -> None:
        """Wake everyone in :meth:`_wait_until` to recheck."""
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)

    async def close(self) -> None:
        """Stop reconnecting, close every connection and end event streams."""
        if self._closing:
            return
        self._closing = True
        tasks = []
        for member in self._members.values():
            if member.timer is not None:
                member.timer.cancel()
            if member.task is not None:
                member.task.cancel()
                tasks.append(member.task)
            if member.client is not None:
                member.client.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the aborted transports report their end
        for subscriber in list(self._subscribers):
            subscriber.close()
        self._pulse()

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- connections ------------------------------------------------------

    def _member(self, vm: str) -> _Member:
        try:
            return self._members[vm]
        except KeyError:
            if not self._started:
                raise StateError("the fleet is not started") from None
            raise KeyError(f"no VM named {vm!r} in this fleet") from None

    def _launch(self, member: _Member) -> None:
        """Start one connection attempt now."""
        member.timer = None
        if not self._closing:
            member.task = asyncio.get_running_loop().create_task(self._attempt(member))

    async def _connect(self, member: _Member) -> Any:
        """Connect, within the cap on simultaneous socket connects, then greet.

        Only opening the socket holds a slot: VMs that accept and never
        greet wait out their ``connect_timeout`` side by side and cannot keep
        the others from connecting.
        """
        from . import aio

        assert self._slots is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        async with self._slots:
            try:
                sock = await asyncio.wait_for(_open_socket(member.address), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                where = parse_address(member.address)
                raise connect_error(
                    exc, where, agent=self.guest_agent, timeout=self.connect_timeout, connected=False
                ) from exc
        left = max(deadline - loop.time(), 1e-3)
        options: dict[str, Any] = {"timeout": left, "max_frame_size": self.max_frame_size}
        if self._ssl is not None:
            # The socket's peer is an IP address: verify the name the VM was given by.
            host = self._server_hostname or parse_address(member.address).sockaddr[0]
            options.update(ssl=self._ssl, server_hostname=host)
        if self.guest_agent:
            return await aio.connect_guest_agent(sock=sock, **options)
        # The fleet's listener claims every event: keep no unclaimed ones.
        return await aio.connect(sock=sock, event_queue=0, validate=self.validate, **options)

    async def _attempt(self, member: _Member) -> None:
        try:
            client = await self._connect(member)
        except (OSError, ValueError, QMPError, asyncio.TimeoutError) as exc:
            member.task = None
            member.last_error = exc
            self._tried(member)
            self._retry(member)
            return
        except BaseException:
            member.task = None
            raise
        member.task = None
        if self._closing:
            client.abort()
            return
        if member.ever_connected:
            self._reconnects += 1
        member.ever_connected = True
        member.connected_at = asyncio.get_running_loop().time()
        member.base = client._proto.commands_issued
        member.client = client
        member.attempt = member._attempt  # counts the client's replies from here on
        member.last_error = None
        self._connected += 1
        self._tried(member)
        self._listen(member, client)

    def _listen(self, member: _Member, client: Any) -> None:
        """Forward ``client``'s events to the fleet as they arrive, and notice its end.

        The client calls these back while it routes received bytes: no task
        and no queue per connection.
        """
        client._router.add_listener(member.on_event, member.on_close, with_cost=True)

    def _tried(self, member: _Member) -> None:
        if not member.tried:
            member.tried = True
            self._untried -= 1
        self._pulse()

    def _lost(self, member: _Member, client: Any) -> None:
        """``client``'s connection ended: note why, and reconnect."""
        if member.client is client:
            member.client = None
            self._connected -= 1
            if not self.guest_agent:  # its counters become the fleet's
                self._commands += self._finished_on(member, client)
                self._timeouts += client._timeouts
                if client._answered != member._answered:
                    member.attempt = 0  # a command was answered: the connection proved healthy
            backoff = self.backoff
            if backoff is not None and asyncio.get_running_loop().time() - member.connected_at >= backoff.healthy_after:
                member.attempt = 0  # it stayed up long enough to count as healthy
            member.last_error = client.connection_error or ConnectionLost(
                f"{member.name}: the server closed the connection"
            )
            self._pulse()
            if not self._closing:
                self._retry(member)

    def _retry(self, member: _Member) -> None:
        if self.backoff is None or self._closing:
            return
        delay = self.backoff.delay(member.attempt)
        member.attempt += 1
        member.timer = asyncio.get_running_loop().call_later(delay, self._launch, member)

    # -- commands ---------------------------------------------------------

    async def execute(
        self,
        vm: str,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        args: Any = _UNSET,
    ) -> Any:
        """Run ``command`` on one VM and return its ``"return"`` value.

        Raises :class:`~qmpcore.CommandError`, :class:`~qmpcore.TimeoutError`
        after ``timeout`` (default ``command_timeout``), or
        :class:`~qmpcore.ConnectionLost` when the VM is not connected.
        ``args=`` is the deprecated name of ``arguments``.
        """
        return await self.submit(vm, command, _arguments(arguments, args), timeout=timeout)

    def submit(
        self,
        vm: str,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        args: Any = _UNSET,
    ) -> asyncio.Future[Any]:
        """Start ``command`` on one VM; return a future of its ``"return"`` value.

        :meth:`execute` without a coroutine per command, for starting many
        at once; the future fails as :meth:`execute` would raise.
        """
        member = self._members.get(vm)
        if member is None:
            member = self._member(vm)  # raises
        if args is not _UNSET:
            arguments = _arguments(arguments, args)
        return self._submit(
            member, command, arguments, self.command_timeout if timeout is None else self._timeout(timeout)
        )

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.command_timeout
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        return timeout

    def _submit(
        self, member: _Member, command: str, arguments: dict[str, Any] | None, timeout: float
    ) -> asyncio.Future[Any]:
        client = member.client
        if client is None or client._closed:
            return _failed(ConnectionLost(f"{member.name}: not connected ({member.last_error})"))
        if not self.guest_agent:
            # No callback per command: the client's own counters (commands
            # issued, waiters, timeouts, replies, last outcome) are the
            # fleet's bookkeeping, read by stats() and added up when the
            # connection ends.
            fut: asyncio.Future[Any] = client.submit(command, arguments, timeout=timeout)
            if fut.done():  # refused before it was sent (validate=True)
                self._commands += 1
                client._last_outcome = fut.exception()
            return fut
        # One command at a time, with resyncs: no shortcut.
        fut = asyncio.ensure_future(client.execute(command, arguments, timeout=timeout))
        self._in_flight += 1
        fut.add_done_callback(functools.partial(self._finished, member, client))
        return fut

    @staticmethod
    def _finished_on(member: _Member, client: Any) -> int:
        """Commands of the fleet's QMP ``client`` that have finished (answered, failed, given up)."""
        finished: int = client._proto.commands_issued - len(client._waiters) - member.base
        return finished

    def _finished(self, member: _Member, client: Any, fut: asyncio.Future[Any]) -> None:
        """Bookkeeping when a guest agent command's future is done (its result is left alone)."""
        self._in_flight -= 1
        self._commands += 1
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if isinstance(exc, QMPTimeoutError):
            self._timeouts += 1
        if (exc is None or isinstance(exc, CommandError)) and member.client is client:
            member.attempt = 0  # the VM answered: the connection proved healthy
        member.last_error = exc

    async def execute_all(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        vms: Iterable[str] | None = None,
        args: Any = _UNSET,
    ) -> dict[str, Result]:
        """Run ``command`` on every VM (or on ``vms``) at once.

        Returns ``{vm: value or exception}`` in fleet order.  A VM that is
        not connected fails at once with :class:`~qmpcore.ConnectionLost`;
        one that does not answer within ``timeout`` with
        :class:`~qmpcore.TimeoutError`; neither delays the others.
        """
        if not self._started:
            raise StateError("the fleet is not started")
        arguments = _arguments(arguments, args)
        limit = self._timeout(timeout)
        members = [self._member(vm) for vm in (self.vms if vms is None else vms)]
        futures = []
        for member in members:
            try:
                futures.append(self._submit(member, command, arguments, limit))
            except Exception as exc:
                futures.append(_failed(exc))
        await _all_done(futures)
        return {m.name: _outcome(fut) for m, fut in zip(members, futures)}

    async def poll(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        every: float,
        timeout: float | None = None,
        rounds: int | None = None,
        args: Any = _UNSET,
    ) -> AsyncIterator[dict[str, Result]]:
        """Yield the results of ``execute_all(command)`` every ``every`` seconds.

        Rounds never overlap: when one takes longer than ``every`` (slow VMs
        wait out their timeout) the next starts as soon as it ends, and the
        ticks it missed are skipped rather than run in a burst.  ``timeout``
        is each VM's limit per round (default ``command_timeout``).
        ``rounds`` stops after that many.
        """
        if every <= 0:
            raise ValueError("every must be positive")
        arguments = _arguments(arguments, args)
        limit = self._timeout(timeout)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        done = 0
        while rounds is None or done < rounds:
            yield await self.execute_all(command, arguments, timeout=limit)
            done += 1
            next_at += every
            now = loop.time()
            if next_at < now:  # the round overran: skip the ticks it missed
                next_at = now
            await asyncio.sleep(next_at - now)

    # -- events -----------------------------------------------------------

    def events(self, *names: str, maxsize: int | None = None, max_bytes: int | None = None) -> FleetEvents:
        """A merged stream of ``(vm, event)`` from every VM (only ``names`` if given).

        Bounded by ``maxsize`` events (default ``event_maxsize``) and
        ``max_bytes`` bytes (default ``event_max_bytes``), and all streams
        together by ``event_budget``: when the consumer falls behind, the
        oldest events are dropped and counted.
        """
        stream = FleetEvents(
            self,
            names,
            self.event_maxsize if maxsize is None else maxsize,
            self.event_max_bytes if max_bytes is None else max_bytes,
        )
        if self._closing:
            stream._closed = True
        else:
            self._subscribers.add(stream)
        return stream

    def _deliver(self, vm: str, event: Any, cost: int) -> None:
        self._events_received += 1
        for subscriber in self._subscribers:
            self._events_dropped += subscriber._offer(vm, event, cost)

    # -- introspection ----------------------------------------------------

    def stats(self) -> Stats:
        """Counters and per-VM errors, as of now."""
        members = self._members.values()
        retrying = 0 if self.backoff is None or self._closing else len(self._members) - self._connected
        protocol_errors = callback_errors = late = held = 0
        in_flight, commands, timeouts = self._in_flight, self._commands, self._timeouts
        last_errors = {}
        qmp = not self.guest_agent
        for m in members:
            client = m.client
            error = m.last_error
            if client is not None:
                protocol_errors += client._protocol_errors
                callback_errors += client._router.callback_errors
                late += client._proto.late_replies
                held += client._proto.held
                if qmp:  # the fleet's bookkeeping is the client's counters
                    in_flight += len(client._waiters)
                    commands += self._finished_on(m, client)
                    timeouts += client._timeouts
                    error = client._last_outcome
            if error is not None:
                last_errors[m.name] = error
        return Stats(
            vms=len(self._pairs),
            connected=self._connected,
            reconnecting=retrying,
            in_flight=in_flight,
            held=held,
            commands=commands,
            timeouts=timeouts,
            late_replies=late,
            reconnects=self._reconnects,
            events_received=self._events_received,
            events_dropped=self._events_dropped,
            events_queued=sum(len(s._queue) for s in self._subscribers),
            events_queued_bytes=self._event_bytes,
            protocol_errors=protocol_errors,
            callback_errors=callback_errors,
            last_errors=last_errors,
        )

    def is_connected(self, vm: str) -> bool:
        return self._member(vm).client is not None

    def client(self, vm: str) -> Any:
        """The live client of one VM (for calls the fleet does not wrap), or None."""
        return self._member(vm).client
