"""Bounded event queues with an explicit overflow policy, and their router.

Shared by the asyncio and blocking clients; nothing here does I/O.  See
:class:`EventRouter` for who gets which event.

Overflow policies, for a consumer that falls behind:

* ``"drop_oldest"`` (default): the oldest queued event makes room and is
  counted in ``dropped``.
* ``"block"``: nothing is dropped; the client stops reading the socket
  until the consumer catches up (the queue may exceed ``maxsize`` by the
  events of one received chunk).  Replies then wait too.
* ``"raise"``: the new event is dropped and counted, and the consumer's
  next read raises :class:`EventOverflow`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import EventOverflow
from ..protocol.events import Event

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
]

log = logging.getLogger("qmpcore")

DROP_OLDEST = "drop_oldest"
BLOCK = "block"
RAISE = "raise"
_POLICIES = (DROP_OLDEST, BLOCK, RAISE)
#: Every queue's items until its first event: one shared, always empty deque.
_NO_ITEMS: deque[Any] = deque(maxlen=0)

Match = None | Mapping[str, Any] | Callable[[Event], bool]
#: Called with each event as it is routed.
EventCallback = Callable[[Event], None]
#: Called once when the connection ends: None for a clean end, else the error.
CloseCallback = Callable[[BaseException | None], None]


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
        "policy",
        "once",
        "dropped",
        "waiter",
        "_items",
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
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {', '.join(_POLICIES)}, not {policy!r}")
        policy = _POLICIES[_POLICIES.index(policy)]  # the constant itself: compared with "is"
        if maxsize < 0 or (maxsize == 0 and policy is not DROP_OLDEST):
            raise ValueError("maxsize must be positive (0 is allowed only with drop_oldest)")
        self.accepts = accepts
        self.maxsize = maxsize
        self.policy = policy
        self.once = once
        self.dropped = 0
        self.waiter: Any = None
        # Made on the first event (a deque costs ~600 bytes even empty, and
        # most connections' backlogs never see one).
        self._items: deque[Event] = _NO_ITEMS
        self._overflow = 0
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def _new_items(self) -> deque[Event]:
        # A bounded deque drops its oldest item by itself on append.
        items: deque[Event] = deque(maxlen=self.maxsize) if self.policy is DROP_OLDEST else deque()
        self._items = items
        return items

    def put(self, ev: Event) -> None:
        items = self._items
        if items is _NO_ITEMS:
            items = self._new_items()
        if len(items) >= self.maxsize:
            policy = self.policy
            if policy is DROP_OLDEST:
                self.dropped += 1  # the append below pushes the oldest out
            elif policy is RAISE:
                self.dropped += 1
                self._overflow += 1
                if self.waiter is not None:
                    self._wake()
                return
        items.append(ev)
        if self.waiter is not None:
            self._wake()

    def put_all(self, events: list[Event]) -> None:
        """:meth:`put` each of ``events``, in one go."""
        items = self._items
        if items is _NO_ITEMS:
            items = self._new_items()
        excess = len(items) + len(events) - self.maxsize
        if excess > 0 and self.waiter is not None:
            for ev in events:  # a synchronous waiter may drain the queue as it fills
                self.put(ev)
            return
        if excess > 0:
            policy = self.policy
            if policy is DROP_OLDEST:
                self.dropped += min(excess, len(items) + len(events))  # extend pushes them out
            elif policy is RAISE:
                self.dropped += excess
                self._overflow += excess
                events = events[: len(events) - excess]
        items.extend(events)
        if self.waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def ready(self) -> bool:
        """True when :meth:`get_nowait` would not block."""
        return bool(self._items) or bool(self._overflow) or self._closed

    def get_nowait(self) -> Event | None:
        """The oldest event; None once closed and drained; raises :class:`EventOverflow`.

        Raises IndexError when empty and still open.
        """
        if self._overflow:
            dropped, self._overflow = self._overflow, 0
            raise EventOverflow(dropped)
        if self._items:
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

    def __init__(self, backlog_maxsize: int = 1000) -> None:
        #: Recent events no waiter took (oldest dropped first).
        self.backlog = EventQueue(None, backlog_maxsize)
        self._subs: list[EventQueue] = []
        self._waiters: list[EventQueue] = []
        self._dropped_gone = 0
        self._listeners: tuple[_Listener, ...] = ()
        self._error: BaseException | None = None
        self._closed = False
        #: Events received in total.
        self.received = 0

    @property
    def dropped(self) -> int:
        """Events subscriptions dropped because their consumer fell behind."""
        return self._dropped_gone + sum(q.dropped for q in self._subs)

    @property
    def blocked(self) -> bool:
        """True when a ``block`` subscription is full: stop reading."""
        for q in self._subs:
            if q.policy is BLOCK and len(q._items) >= q.maxsize:
                return True
        return False

    def subscribe(self, accepts: Callable[[Event], bool] | None, maxsize: int, policy: str = DROP_OLDEST) -> EventQueue:
        """A new queue receiving every event ``accepts`` takes from now on."""
        q = EventQueue(accepts, maxsize, policy)
        if self._closed:
            q.close(self._error)
        else:
            self._subs.append(q)
        return q

    def wait_for(self, accepts: Callable[[Event], bool] | None) -> EventQueue:
        """A one-shot queue for the oldest backlog event ``accepts`` takes, or the next one."""
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

    def add_listener(self, on_event: EventCallback, on_close: CloseCallback | None = None) -> Callable[[], None]:
        """Call ``on_event(ev)`` for every event from now on, ``on_close(error)`` at the end.

        If the router has closed already, ``on_close`` is called at once.
        An exception a callback raises is logged, not propagated.  Returns a
        function that removes the listener (calling it again does nothing).
        """
        if not callable(on_event) or not (on_close is None or callable(on_close)):
            raise TypeError("event listeners must be callable")
        listener = _Listener(on_event, on_close)
        if self._closed:
            listener.closed(self._error)
            return _nothing
        self._listeners += (listener,)

        def remove() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def _notify(self, events: Iterable[Event]) -> None:
        listeners = self._listeners
        for ev in events:
            for listener in listeners:
                try:
                    listener.on_event(ev)
                except Exception:
                    log.exception("event listener %r failed", listener.on_event)

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

    def deliver(self, ev: Event) -> None:
        self.received += 1
        if self._listeners:
            self._notify((ev,))
        for q in self._subs:
            accepts = q.accepts
            if accepts is None or accepts(ev):
                q.put(ev)
        waiters = self._waiters
        if waiters:
            taken = [q for q in waiters if q.accepts is None or q.accepts(ev)]
            if taken:
                for q in taken:
                    waiters.remove(q)
                    q.put(ev)
                    q.close()
                return
        self.backlog.put(ev)

    def deliver_all(self, events: list[Event]) -> None:
        """:meth:`deliver` each of ``events``, in order."""
        if self._waiters:
            for ev in events:
                self.deliver(ev)
            return
        self.received += len(events)
        if self._listeners:
            self._notify(events)
        for q in self._subs:
            accepts = q.accepts
            q.put_all(events if accepts is None else [ev for ev in events if accepts(ev)])
        self.backlog.put_all(events)

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

    __slots__ = ("on_event", "on_close")

    def __init__(self, on_event: EventCallback, on_close: CloseCallback | None) -> None:
        self.on_event = on_event
        self.on_close = on_close

    def closed(self, error: BaseException | None) -> None:
        if self.on_close is not None:
            try:
                self.on_close(error)
            except Exception:
                log.exception("close listener %r failed", self.on_close)


def _nothing() -> None:
    """The remover of a listener that was never added."""
