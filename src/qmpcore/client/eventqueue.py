"""Bounded event queues with an explicit overflow policy, and their router.

Shared by the asyncio and blocking clients; nothing here does I/O.  See
:class:`EventRouter` for who gets which event.

Every queue is bounded twice: in events (``maxsize``) and in bytes
(``max_bytes``, default :data:`EVENT_QUEUE_BYTES`), an event costing the
bytes of the frame it came in (see :func:`event_cost`).  The newest event
is always kept, so a queue holds at most ``max(max_bytes, one frame)``.

Overflow policies, for a consumer that falls behind:

* ``"drop_oldest"`` (default): the oldest queued event makes room and is
  counted in ``dropped``.
* ``"block"``: nothing is dropped; the client stops reading the socket
  until the consumer catches up (the queue may exceed ``maxsize`` by the
  events of one received chunk).  Replies then wait too.
* ``"raise"``: the new event is dropped and counted, and the consumer's
  next read raises :class:`EventOverflow`.

A ``match=`` callable that raises is the problem of whoever supplied it:
its exception is raised by that subscription's next read (or by the
waiting ``wait_event``), the event counts as not matched, and the
connection goes on.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import orjson

from ..errors import EventOverflow
from ..protocol.events import Event
from .disposal import discard

__all__ = [
    "DROP_OLDEST",
    "BLOCK",
    "RAISE",
    "EventOverflow",
    "EventQueue",
    "EventRouter",
    "EventCallback",
    "CloseCallback",
    "make_filter",
    "event_cost",
    "EVENT_QUEUE_BYTES",
]

log = logging.getLogger("qmpcore")

DROP_OLDEST = "drop_oldest"
BLOCK = "block"
RAISE = "raise"
_POLICIES = (DROP_OLDEST, BLOCK, RAISE)

Match = None | Mapping[str, Any] | Callable[[Event], bool]
#: Called with each event as it is routed.
EventCallback = Callable[[Event], None]
#: Called once when the connection ends: None for a clean end, else the error.
CloseCallback = Callable[[BaseException | None], None]

#: Default byte budget of each event queue (backlog and subscriptions).
EVENT_QUEUE_BYTES = 16 << 20

# What a queue holds instead of its two deques (about 600 bytes each) until
# its first event: most connections' backlogs never get one (a fleet's are
# of size 0 and never do).
_NO_ITEMS: Any = ()


def event_cost(ev: Event) -> int:
    """What ``ev`` costs in a queue: the length of its frame, re-encoded.

    Only needed when several frames came in one read and the read's bytes
    cannot be shared out by frame (see :meth:`EventRouter.deliver_all`).
    """
    try:
        return len(orjson.dumps(ev.raw))
    except (TypeError, orjson.JSONEncodeError):  # integers past 64 bits
        return len(repr(ev.raw))


def accepted(q: EventQueue, ev: Event) -> bool:
    """Whether ``q`` wants ``ev``; a filter that raises is reported to ``q``'s reader."""
    accepts = q.accepts
    if accepts is None:
        return True
    try:
        return bool(accepts(ev))
    except Exception as exc:
        q.fail(exc)
        return False


def make_filter(names: Iterable[str], match: Match = None) -> Callable[[Event], bool] | None:
    """A predicate for events named in ``names`` (any if empty) that satisfy ``match``.

    ``match`` is a dict of ``data`` members that must be equal, or a callable
    taking the :class:`Event`.  Returns None when every event is accepted.
    """
    wanted = frozenset(names)
    for name in wanted:
        if not isinstance(name, str):
            raise TypeError(f"event names must be str, not {type(name).__name__}")
    test = _data_matcher(match)
    if not wanted:
        return test
    if test is None:
        return lambda ev: ev.name in wanted
    return lambda ev: ev.name in wanted and bool(test(ev))


def _data_matcher(match: Match) -> Callable[[Event], bool] | None:
    """``match`` as a predicate (a dict becomes "these data members are equal")."""
    if match is None or callable(match):
        return match
    if not isinstance(match, Mapping):
        raise TypeError("match must be a dict of data members or a callable")
    expected = dict(match)

    def has_members(ev: Event) -> bool:
        data = ev.data
        return all(k in data and data[k] == v for k, v in expected.items())

    return has_members


class EventQueue:
    """One bounded queue of events with an overflow policy.

    ``waiter`` may hold a future-like object (``done()``/``set_result()``)
    that is completed when an event arrives or the queue closes; the
    asyncio client uses it, the blocking client uses a condition instead.
    """

    __slots__ = (
        "accepts",
        "maxsize",
        "max_bytes",
        "nbytes",
        "policy",
        "once",
        "dropped",
        "waiter",
        "_items",
        "_costs",
        "_failure",
        "_overflow",
        "_closed",
        "_error",
    )

    def __init__(
        self,
        accepts: Callable[[Event], bool] | None = None,
        maxsize: int = 1000,
        policy: str = DROP_OLDEST,
        once: bool = False,
        max_bytes: int = EVENT_QUEUE_BYTES,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {', '.join(_POLICIES)}, not {policy!r}")
        policy = _POLICIES[_POLICIES.index(policy)]  # the constant itself: compared with "is"
        if maxsize < 0 or (maxsize == 0 and policy is not DROP_OLDEST):
            raise ValueError("maxsize must be positive (0 is allowed only with drop_oldest)")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.accepts = accepts
        self.maxsize = maxsize
        #: Byte budget: the oldest events make room (or the policy applies)
        #: when the queued events cost more.
        self.max_bytes = max_bytes
        #: What the queued events cost, in bytes.
        self.nbytes = 0
        self.policy = policy
        self.once = once
        self.dropped = 0
        self.waiter: Any = None
        # Made by the first event (see _grow).
        self._items: deque[Event] = _NO_ITEMS
        self._costs: deque[int] = _NO_ITEMS
        self._failure: BaseException | None = None  # raised once by the next read
        self._overflow = 0
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, ev: Event, cost: int = 0) -> None:
        """Queue ``ev``, which costs ``cost`` bytes, applying the overflow policy."""
        items = self._items
        if len(items) >= self.maxsize or (items and self.nbytes + cost > self.max_bytes):
            policy = self.policy
            if policy is DROP_OLDEST:
                if len(items) >= self.maxsize and items:
                    self.dropped += 1  # the append below pushes the oldest out
                    self.nbytes -= self._costs[0]
            elif policy is RAISE:
                self.dropped += 1
                self._overflow += 1
                if self.waiter is not None:
                    self._wake()
                return
        if self.maxsize:
            if items is _NO_ITEMS:
                items = self._grow()
            items.append(ev)
            self._costs.append(cost)
            self.nbytes += cost
            if self.nbytes > self.max_bytes and self.policy is DROP_OLDEST:
                self._shed()
        else:
            self.dropped += 1
        if self.waiter is not None:
            self._wake()

    def _grow(self) -> deque[Event]:
        """The deques of a queue that gets its first event."""
        maxsize = self.maxsize
        # A bounded deque drops its oldest item by itself on append.
        self._items = deque(maxlen=maxsize) if self.policy is DROP_OLDEST else deque()
        self._costs = deque(maxlen=maxsize) if self.policy is DROP_OLDEST else deque()
        return self._items

    def _shed(self) -> None:
        """Drop the oldest events until the rest fit the byte budget (the newest stays)."""
        items, costs = self._items, self._costs
        while self.nbytes > self.max_bytes and len(items) > 1:
            cost = costs.popleft()
            self.nbytes -= cost
            self.dropped += 1
            discard(items.popleft(), cost)  # (a large one: a slice per turn)

    def put_all(self, events: list[Event], costs: list[int] | None = None) -> None:
        """:meth:`put` each of ``events`` (costing ``costs``, 0 each if None), in one go."""
        if not self.maxsize:  # keeps nothing
            self.dropped += len(events)
            if self.waiter is not None:
                self._wake()
            return
        if costs is None:
            costs = [0] * len(events)
        items = self._items
        excess = len(items) + len(events) - self.maxsize
        total = sum(costs)
        if (excess > 0 or self.nbytes + total > self.max_bytes) and (
            self.waiter is not None or self.policy is not DROP_OLDEST
        ):
            for ev, cost in zip(events, costs):  # a synchronous waiter may drain the queue as it fills
                self.put(ev, cost)
            return
        if excess > 0:  # drop_oldest: extend pushes the oldest out
            gone = min(excess, len(items) + len(events))
            self.dropped += gone
            old = min(excess, len(items))
            if old:
                self.nbytes -= sum(islice(self._costs, old))
            if gone > old:
                total -= sum(costs[: gone - old])
        if items is _NO_ITEMS:
            items = self._grow()
        items.extend(events)
        self._costs.extend(costs)
        self.nbytes += total
        if self.nbytes > self.max_bytes:
            self._shed()
        if self.waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        """The consumer's own filter raised ``error``: raise it at the next read.

        A one-shot queue (``wait_event``) ends with it.
        """
        if self.once:
            self.close(error)
        else:
            self._failure = error
            self._wake()

    def ready(self) -> bool:
        """True when :meth:`get_nowait` would not block."""
        return bool(self._items) or bool(self._overflow) or self._closed or self._failure is not None

    def get_nowait(self) -> Event | None:
        """The oldest event; None once closed and drained; raises :class:`EventOverflow`.

        Raises IndexError when empty and still open, and once the error of
        this queue's own ``match=`` callable if it raised.
        """
        if self._failure is not None:
            error, self._failure = self._failure, None
            raise error
        if self._overflow:
            dropped, self._overflow = self._overflow, 0
            raise EventOverflow(dropped)
        if self._items:
            self.nbytes -= self._costs.popleft()
            return self._items.popleft()
        if self._closed:
            if self._error is not None:
                raise self._error
            return None
        raise IndexError("no event queued")

    def take(self, accepts: Callable[[Event], bool] | None) -> Event | None:
        """Remove and return the oldest queued event ``accepts`` takes, if any."""
        items = self._items
        for i, ev in enumerate(items):
            if accepts is None or accepts(ev):
                del items[i]
                self.nbytes -= self._costs[i]
                del self._costs[i]
                return ev
        return None

    def close(self, error: BaseException | None = None) -> None:
        """No more events will come; ``error`` is raised once drained."""
        self._closed = True
        self._error = error
        self._wake()


class EventRouter:
    """Delivers each event to the subscriptions and waiters that want it.

    Subscriptions (``events()``) each get a copy of every event they
    accept, from the moment they subscribe.  One-shot waiters
    (``wait_event``) take the first event they accept; an event no waiter
    took goes to the *backlog*, a bounded drop-oldest queue that
    ``wait_event`` searches first and ``pull_event`` pops, so an event that
    arrived before a command's reply is still found after it.

    Listeners (``add_listener``) are plain callbacks, called with each event
    before it is queued and once more when the router closes.
    """

    __slots__ = (
        "max_bytes",
        "backlog",
        "_subs",
        "_waiters",
        "_dropped_gone",
        "_listeners",
        "_error",
        "_closed",
        "received",
        "callback_errors",
    )

    def __init__(self, backlog_maxsize: int = 1000, max_bytes: int = EVENT_QUEUE_BYTES) -> None:
        #: Byte budget of the backlog and the default of each subscription.
        self.max_bytes = max_bytes
        #: Recent events no waiter took (oldest dropped first).
        self.backlog = EventQueue(None, backlog_maxsize, max_bytes=max_bytes)
        self._subs: list[EventQueue] = []
        self._waiters: list[EventQueue] = []
        self._dropped_gone = 0
        self._listeners: tuple[_Listener, ...] = ()
        self._error: BaseException | None = None
        self._closed = False
        #: Events received in total.
        self.received = 0
        #: Exceptions raised by listeners (each listener's first one is logged).
        self.callback_errors = 0

    @property
    def dropped(self) -> int:
        """Events subscriptions dropped because their consumer fell behind."""
        return self._dropped_gone + sum(q.dropped for q in self._subs)

    @property
    def queued_bytes(self) -> int:
        """What the events in the backlog and every subscription cost, in bytes."""
        return self.backlog.nbytes + sum(q.nbytes for q in self._subs)

    @property
    def blocked(self) -> bool:
        """True when a ``block`` subscription is full: stop reading."""
        for q in self._subs:
            if q.policy is BLOCK and (len(q._items) >= q.maxsize or q.nbytes >= q.max_bytes):
                return True
        return False

    def subscribe(
        self,
        accepts: Callable[[Event], bool] | None,
        maxsize: int,
        policy: str = DROP_OLDEST,
        max_bytes: int | None = None,
    ) -> EventQueue:
        """A new queue receiving every event ``accepts`` takes from now on."""
        q = EventQueue(accepts, maxsize, policy, max_bytes=max_bytes or self.max_bytes)
        if self._closed:
            q.close(self._error)
        else:
            self._subs.append(q)
        return q

    def wait_for(self, accepts: Callable[[Event], bool] | None) -> EventQueue:
        """A one-shot queue for the oldest backlog event ``accepts`` takes, or the next one.

        A ``match=`` callable that raises here raises to the caller.
        """
        q = EventQueue(accepts, 1, once=True)
        ev = self.backlog.take(accepts)
        if ev is not None:
            q.put(ev)
            q.close()
        elif self._closed:
            q.close(self._error)
        else:
            self._waiters.append(q)
        return q

    def add_listener(
        self,
        on_event: EventCallback,
        on_close: CloseCallback | None = None,
        *,
        with_cost: bool = False,
    ) -> Callable[[], None]:
        """Call ``on_event(ev)`` for every event from now on, ``on_close(error)`` at the end.

        If the router has closed already, ``on_close`` is called at once.
        An exception a callback raises is counted in :attr:`callback_errors`
        and logged the first time, not propagated.  ``with_cost`` calls
        ``on_event(ev, cost)`` instead, ``cost`` being the event's size in
        bytes.  Returns a function that removes the listener (calling it
        again does nothing).
        """
        if not callable(on_event) or not (on_close is None or callable(on_close)):
            raise TypeError("event listeners must be callable")
        listener = _Listener(on_event, on_close, with_cost)
        if self._closed:
            listener.closed(self._error)
            return _nothing
        self._listeners += (listener,)
        # Bound when asked for, not kept: a caller that never removes the
        # listener (a Fleet) pays nothing per connection for it.
        return functools.partial(self._remove, listener)

    def _remove(self, listener: _Listener) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def _notify(self, events: Iterable[Event], costs: list[int]) -> None:
        listeners = self._listeners
        for ev, cost in zip(events, costs):
            for listener in listeners:
                try:
                    if listener.with_cost:
                        listener.on_event(ev, cost)  # type: ignore[call-arg]
                    else:
                        listener.on_event(ev)
                except Exception:
                    self.callback_errors += 1
                    if not listener.failed:
                        listener.failed = True
                        log.exception(
                            "event listener %r failed (further failures are counted, not logged)", listener.on_event
                        )

    def unsubscribe(self, q: EventQueue) -> None:
        """Stop delivering to ``q`` (a subscription or a waiter)."""
        if q.once:
            if q in self._waiters:
                self._waiters.remove(q)
            return
        try:
            self._subs.remove(q)
        except ValueError:
            return
        self._dropped_gone += q.dropped

    def deliver(self, ev: Event, cost: int = 0) -> None:
        """Route one event that cost ``cost`` bytes."""
        self.received += 1
        if self._listeners:
            self._notify((ev,), [cost])
        for q in self._subs:
            if accepted(q, ev):
                q.put(ev, cost)
        waiters = self._waiters
        if waiters:
            taken = [q for q in waiters if accepted(q, ev)]
            failed = [q for q in waiters if q.closed]  # their match= raised
            for q in failed:
                waiters.remove(q)
            if taken:
                for q in taken:
                    waiters.remove(q)
                    q.put(ev)
                    q.close()
                return
        self.backlog.put(ev, cost)

    def deliver_all(self, events: list[Event], nbytes: int = 0, first: int = 0, exact: bool = False) -> None:
        """:meth:`deliver` each of ``events``, in order.

        ``nbytes`` is what the read that completed them cost, shared out
        equally, ``first`` the bytes the first event had buffered before.
        With ``exact`` (the read completed nothing else) that is each
        event's own size.  A queue with a filter takes only some of them, so
        it charges each one :func:`event_cost` instead, unless exact.
        """
        n = len(events)
        share = nbytes // n if n else 0
        costs = [share] * n
        if n:
            costs[0] += first
        if self._waiters:
            for ev, cost in zip(events, costs):
                self.deliver(ev, cost)
            return
        self.received += n
        if self._listeners:
            self._notify(events, costs)
        for q in self._subs:
            if q.accepts is None:
                q.put_all(events, costs)
                continue
            mask = [accepted(q, ev) for ev in events]
            taken = [ev for ev, ok in zip(events, mask) if ok]
            if taken:
                if exact:
                    q.put_all(taken, [c for c, ok in zip(costs, mask) if ok])
                else:
                    q.put_all(taken, [event_cost(ev) for ev in taken])
        self.backlog.put_all(events, costs)

    def close(self, error: BaseException | None = None) -> None:
        """The connection ended: every queue ends once drained."""
        self._closed = True
        self._error = error
        self.backlog.close(error)
        for q in self._subs:
            q.close(error)
        for q in self._waiters:
            q.close(error)
        self._waiters.clear()
        listeners, self._listeners = self._listeners, ()
        for listener in listeners:
            listener.closed(error)


class _Listener:
    """One pair of :meth:`EventRouter.add_listener` callbacks."""

    __slots__ = ("on_event", "on_close", "with_cost", "failed")

    def __init__(self, on_event: EventCallback, on_close: CloseCallback | None, with_cost: bool = False) -> None:
        self.on_event = on_event
        self.on_close = on_close
        self.with_cost = with_cost
        self.failed = False  # its first failure was logged

    def closed(self, error: BaseException | None) -> None:
        if self.on_close is not None:
            try:
                self.on_close(error)
            except Exception:
                log.exception("close listener %r failed", self.on_close)


def _nothing() -> None:
    """The remover of a listener that was never added."""
