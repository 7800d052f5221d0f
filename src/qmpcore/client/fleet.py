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
import errno
import functools
import os
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import (
    Any,
    Union,
)

from ..errors import ConnectionLost, QMPError, StateError
from ..errors import TimeoutError as QMPTimeoutError
from .address import parse_address
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

#: File descriptors kept free for everything that is not a VM connection.
FD_RESERVE = 64


@dataclass(frozen=True)
class Backoff:
    """Delays between connection attempts: exponential, capped, jittered.

    Attempt ``n`` (from 0) waits ``min(maximum, initial * factor**n)``,
    shortened by a random fraction of up to ``jitter`` so that VMs that
    failed together do not retry together.
    """

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("Backoff needs 0 <= initial <= maximum and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff jitter must be between 0 and 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


@dataclass(frozen=True)
class FleetStats:
    """A snapshot of a fleet's counters (:meth:`Fleet.stats`)."""

    vms: int
    connected: int
    """VMs with a live connection."""
    reconnecting: int
    """VMs without one that are being retried."""
    in_flight: int
    """Commands sent and not yet answered or timed out."""
    commands: int
    """Commands finished (answered, failed, or timed out)."""
    timeouts: int
    reconnects: int
    """Connections re-established after one was lost."""
    events_received: int
    events_dropped: int
    """Events discarded because a consumer of :meth:`Fleet.events` fell behind."""
    last_errors: dict[str, BaseException] = field(default_factory=dict)
    """Per VM, the last connection or command error (cleared on success)."""


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    """A future that has already failed with ``exc``."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


def ensure_fd_limit(needed: int) -> int:
    """Raise ``RLIMIT_NOFILE`` so ``needed`` more descriptors can be opened.

    Raises the soft limit, and the hard limit too where the process may;
    returns the resulting soft limit.  Raises :class:`OSError` (``EMFILE``)
    with the numbers and the remedy when the limit cannot go high enough.
    """
    try:
        import resource
    except ImportError:  # Windows: no such limit to manage
        return needed
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = FD_RESERVE
    want = needed + in_use + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= want:
        return soft if soft != infinite else want
    if hard != infinite and hard < want:
        try:  # privileged processes may raise the hard limit as well
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    target = want if hard == infinite else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < want:
        raise OSError(
            errno.EMFILE,
            f"{needed} connections need about {want} open files, but the limit is "
            f"{target} (hard limit {hard}) and cannot be raised further; "
            f"raise it (ulimit -n, LimitNOFILE=, /etc/security/limits.conf) "
            f"or use fewer VMs per process",
        )
    return target


class FleetEvents:
    """A merged, bounded stream of ``(vm, event)`` from every VM of a fleet.

    When the consumer falls behind, the oldest queued events are dropped
    and counted (:attr:`dropped`, and the fleet's ``events_dropped``); memory
    never grows past ``maxsize`` events.  Iteration ends when the fleet
    closes or :meth:`close` is called.
    """

    def __init__(self, fleet: Fleet, names: Iterable[str], maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._fleet = fleet
        self._names = frozenset(names)
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future | None = None
        self._closed = False
        #: Events dropped from this stream because it was full.
        self.dropped = 0

    def _offer(self, vm: str, event: Any) -> bool:
        """Queue one event if it matches; return True when one was dropped."""
        if self._names and event.name not in self._names:
            return False
        dropped = len(self._queue) >= self._maxsize
        if dropped:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((vm, event))
        self._wake()
        return dropped

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

    __slots__ = ("name", "address", "client", "last_error", "tried", "ever_connected", "attempt", "task", "timer")

    def __init__(self, name: str, address: Address) -> None:
        self.name = name
        self.address = address
        self.client: Any = None
        self.last_error: BaseException | None = None
        self.tried = False  # the first attempt has finished
        self.ever_connected = False
        self.attempt = 0  # failed attempts since the last success
        self.task: asyncio.Task | None = None  # a connection attempt under way
        self.timer: asyncio.TimerHandle | None = None  # the next attempt


class Fleet:
    """Connections to many VMs in one event loop.

    ``addresses`` is a mapping of VM name to address, or an iterable of
    addresses (each then named by its path or ``host:port``).  An address is
    a unix socket path or a ``(host, port)`` tuple.

    ``connect_timeout`` bounds each connection attempt (connect, greeting and
    negotiation); ``command_timeout`` is the default per-VM timeout of
    commands; ``max_concurrency`` caps simultaneous connection attempts.
    ``reconnect`` is True (default :class:`Backoff`), a :class:`Backoff`, or
    False to try each VM once and never reconnect.  ``guest_agent=True``
    talks to guest agents instead of QMP monitors.  ``event_maxsize`` is the
    default bound of each :meth:`events` stream.  ``ssl`` connects every
    VM with TLS (TCP addresses only; ``server_hostname`` as for
    :func:`~qmpcore.connect`, default each address's host).
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
        for _, addr in pairs:
            check_tls(parse_address(addr), ssl, server_hostname)
        self._tls: dict[str, Any] = {"ssl": ssl, "server_hostname": server_hostname}
        self._pairs = pairs
        self._members: dict[str, _Member] = {}
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_concurrency = max_concurrency
        self.backoff: Backoff | None = (
            Backoff() if reconnect is True else (reconnect or None)  # type: ignore[assignment]
        )
        self.guest_agent = guest_agent
        self.event_maxsize = event_maxsize
        self.validate = validate and not guest_agent
        self._subscribers: set[FleetEvents] = set()
        self._slots: asyncio.Semaphore | None = None
        self._changed: Any = None  # asyncio.Event, pulsed on every VM state change
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
        self._changed = asyncio.Event()
        for name, address in self._pairs:
            member = self._members[name] = _Member(name, address)
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
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    def _pulse(self) -> None:
        """Wake everyone in :meth:`_wait_until` to recheck."""
        self._changed.set()
        self._changed.clear()

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
        if self._changed is not None:
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
        """Connect, within the cap on simultaneous attempts."""
        from . import aio

        assert self._slots is not None
        async with self._slots:
            if self.guest_agent:
                return await aio.connect_guest_agent(member.address, timeout=self.connect_timeout, **self._tls)
            # The fleet's listener claims every event: keep no unclaimed ones.
            return await aio.connect(
                member.address, timeout=self.connect_timeout, event_queue=0, validate=self.validate, **self._tls
            )

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
        member.attempt = 0
        member.client = client
        member.last_error = None
        self._connected += 1
        self._tried(member)
        self._listen(member, client)

    def _listen(self, member: _Member, client: Any) -> None:
        """Forward ``client``'s events to the fleet as they arrive, and notice its end.

        The client calls these back while it routes received bytes: no task
        and no queue per connection.
        """
        name = member.name
        client.add_event_listener(
            lambda event: self._deliver(name, event),
            on_close=lambda _error: self._lost(member, client),
        )

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

    async def execute(self, vm: str, command: str, args: dict | None = None, *, timeout: float | None = None) -> Any:
        """Run ``command`` on one VM and return its ``"return"`` value.

        Raises :class:`~qmpcore.CommandError`, :class:`~qmpcore.TimeoutError`
        after ``timeout`` (default ``command_timeout``), or
        :class:`~qmpcore.ConnectionLost` when the VM is not connected.
        """
        return await self.submit(vm, command, args, timeout=timeout)

    def submit(
        self, vm: str, command: str, args: dict | None = None, *, timeout: float | None = None
    ) -> asyncio.Future[Any]:
        """Start ``command`` on one VM; return a future of its ``"return"`` value.

        :meth:`execute` without a coroutine per command, for starting many
        at once; the future fails as :meth:`execute` would raise.
        """
        return self._submit(self._member(vm), command, args, self._timeout(timeout))

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.command_timeout
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        return timeout

    def _submit(self, member: _Member, command: str, args: dict | None, timeout: float) -> asyncio.Future[Any]:
        client = member.client
        if client is None or client.closed:
            return _failed(ConnectionLost(f"{member.name}: not connected ({member.last_error})"))
        if self.guest_agent:  # one command at a time, with resyncs: no shortcut
            fut = asyncio.ensure_future(client.execute(command, args, timeout=timeout))
        else:
            fut = client.submit(command, args, timeout=timeout)
        self._in_flight += 1
        fut.add_done_callback(functools.partial(self._finished, member))
        return fut

    def _finished(self, member: _Member, fut: asyncio.Future[Any]) -> None:
        """Bookkeeping when a command's future is done (its result is left alone)."""
        self._in_flight -= 1
        self._commands += 1
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if isinstance(exc, QMPTimeoutError):
            self._timeouts += 1
        member.last_error = exc

    async def execute_all(
        self,
        command: str,
        args: dict | None = None,
        *,
        timeout: float | None = None,
        vms: Iterable[str] | None = None,
    ) -> dict[str, Result]:
        """Run ``command`` on every VM (or on ``vms``) at once.

        Returns ``{vm: value or exception}`` in fleet order.  A VM that is
        not connected fails at once with :class:`~qmpcore.ConnectionLost`;
        one that does not answer within ``timeout`` with
        :class:`~qmpcore.TimeoutError`; neither delays the others.
        """
        if not self._started:
            raise StateError("the fleet is not started")
        limit = self._timeout(timeout)
        members = [self._member(vm) for vm in (self.vms if vms is None else vms)]
        futures = []
        for member in members:
            try:
                futures.append(self._submit(member, command, args, limit))
            except Exception as exc:
                futures.append(_failed(exc))
        results = await asyncio.gather(*futures, return_exceptions=True)
        return {m.name: r for m, r in zip(members, results)}

    async def poll(
        self,
        command: str,
        args: dict | None = None,
        *,
        every: float,
        timeout: float | None = None,
        rounds: int | None = None,
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
        limit = self._timeout(timeout)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        done = 0
        while rounds is None or done < rounds:
            yield await self.execute_all(command, args, timeout=limit)
            done += 1
            next_at += every
            now = loop.time()
            if next_at < now:  # the round overran: skip the ticks it missed
                next_at = now
            await asyncio.sleep(next_at - now)

    # -- events -----------------------------------------------------------

    def events(self, *names: str, maxsize: int | None = None) -> FleetEvents:
        """A merged stream of ``(vm, event)`` from every VM (only ``names`` if given).

        Bounded by ``maxsize`` (default ``event_maxsize``): when the consumer
        falls behind, the oldest events are dropped and counted.
        """
        stream = FleetEvents(self, names, self.event_maxsize if maxsize is None else maxsize)
        if self._closing:
            stream._closed = True
        else:
            self._subscribers.add(stream)
        return stream

    def _deliver(self, vm: str, event: Any) -> None:
        self._events_received += 1
        for subscriber in self._subscribers:
            if subscriber._offer(vm, event):
                self._events_dropped += 1

    # -- introspection ----------------------------------------------------

    def stats(self) -> FleetStats:
        """Counters and per-VM errors, as of now."""
        members = self._members.values()
        retrying = 0 if self.backoff is None or self._closing else len(self._members) - self._connected
        return FleetStats(
            vms=len(self._pairs),
            connected=self._connected,
            reconnecting=retrying,
            in_flight=self._in_flight,
            commands=self._commands,
            timeouts=self._timeouts,
            reconnects=self._reconnects,
            events_received=self._events_received,
            events_dropped=self._events_dropped,
            last_errors={m.name: m.last_error for m in members if m.last_error is not None},
        )

    def is_connected(self, vm: str) -> bool:
        return self._member(vm).client is not None

    def client(self, vm: str) -> Any:
        """The live client of one VM (for calls the fleet does not wrap), or None."""
        return self._member(vm).client
