"""Event listeners with qemu.qmp's interface and bounded memory.

Each :class:`EventListener` is a FIFO of the events it accepts.  Unlike
qemu.qmp, the FIFO and the history are bounded: when a consumer falls
behind, the oldest pending event makes room and is counted in
``dropped``.  Events are delivered synchronously, in wire order, as they
are received, so an event that arrives before a command's reply is in
every listener by the time that command returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager

from ._errors import ListenerError
from ._message import Message

__all__ = ["EventListener", "Events", "EventNames", "EventFilter", "DEFAULT_MAXSIZE"]

EventNames = str | Iterable[str] | None
EventFilter = Callable[[Message], bool]

#: Pending events (and history entries) each listener keeps at most.
DEFAULT_MAXSIZE = 10_000


class EventListener:
    """A filtered FIFO of events.

    Subclasses may override :meth:`accept`; the adapter's internals are
    named ``_qmpcore_*``.

    ``names`` is one event name or several (all events when empty);
    ``event_filter`` is a further predicate.  ``maxsize`` bounds both the
    pending events and :attr:`history`.
    """

    def __init__(
        self,
        names: EventNames = None,
        event_filter: EventFilter | None = None,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.names: set[str] = set()
        if isinstance(names, str):
            self.names.add(names)
        elif names is not None:
            self.names.update(names)
        self.event_filter = event_filter
        self.maxsize = maxsize
        #: Pending events dropped to stay within ``maxsize``.
        self.dropped = 0
        self._qmpcore_pending: deque[Message] = deque()
        self._history: deque[Message] = deque(maxlen=maxsize)
        self._qmpcore_getters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        args = []
        if self.names:
            args.append(f"names={self.names!r}")
        if self.event_filter:
            args.append(f"event_filter={self.event_filter!r}")
        state = f"<pending={len(self._qmpcore_pending)}>" if self._qmpcore_pending else ""
        return f"{type(self).__name__}{state}({', '.join(args)})"

    @property
    def history(self) -> tuple[Message, ...]:
        """Events accepted so far, oldest first (the last ``maxsize``)."""
        return tuple(self._history)

    def accept(self, event: Message) -> bool:
        """True if this listener wants ``event`` (override to customise)."""
        if self.names and event["event"] not in self.names:
            return False
        return self.event_filter is None or bool(self.event_filter(event))

    def _qmpcore_deliver(self, event: Message) -> None:
        """Queue ``event`` if accepted; never blocks."""
        if not self.accept(event):
            return
        self._history.append(event)
        if len(self._qmpcore_pending) >= self.maxsize:
            self._qmpcore_pending.popleft()
            self.dropped += 1
        self._qmpcore_pending.append(event)
        self._qmpcore_wake_one()

    def _qmpcore_wake_one(self) -> None:
        while self._qmpcore_getters:
            waiter = self._qmpcore_getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def put(self, event: Message) -> None:
        """Queue ``event`` if :meth:`accept` takes it (used by the client)."""
        self._qmpcore_deliver(event)

    async def get(self) -> Message:
        """The next event, waiting for one if none is pending."""
        while not self._qmpcore_pending:
            waiter = asyncio.get_running_loop().create_future()
            self._qmpcore_getters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancel():  # woken, then cancelled: pass it on
                    if self._qmpcore_pending:
                        self._qmpcore_wake_one()
                else:
                    self._qmpcore_getters.remove(waiter)
                raise
        return self._qmpcore_pending.popleft()

    def empty(self) -> bool:
        """True when no event is pending."""
        return not self._qmpcore_pending

    def clear(self) -> list[Message]:
        """Remove and return every pending event."""
        events = list(self._qmpcore_pending)
        self._qmpcore_pending.clear()
        return events

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.get()


class Events:
    """Listener registry mixed into the client; ``events`` is the default
    listener, which hears every event."""

    logger: logging.Logger

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []
        self.events = EventListener()
        self.register_listener(self.events)

    def _qmpcore_dispatch(self, event: Message) -> None:
        for listener in self._listeners:
            try:
                listener._qmpcore_deliver(event)
            except Exception:  # a failing filter must not cost the others
                self.logger.exception("%s failed to accept %s", listener, event.get("event"))

    def register_listener(self, listener: EventListener) -> None:
        """Start delivering events to ``listener``."""
        if listener in self._listeners:
            raise ListenerError("Attempted to re-register existing listener")
        self.logger.debug("Registering %s.", listener)
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop delivering to ``listener`` and clear what it has pending."""
        if listener is self.events:
            raise ListenerError("Cannot remove the default listener.")
        self.logger.debug("Removing %s.", listener)
        listener.clear()
        self._listeners.remove(listener)

    @contextmanager
    def listen(self, *listeners: EventListener) -> Iterator[None]:
        """Register ``listeners`` for the duration of a ``with`` block."""
        added: list[EventListener] = []
        try:
            for listener in listeners:
                self.register_listener(listener)
                added.append(listener)
            yield
        finally:
            for listener in added:
                self.remove_listener(listener)

    @contextmanager
    def listener(self, names: EventNames = (), event_filter: EventFilter | None = None) -> Iterator[EventListener]:
        """A new :class:`EventListener`, registered for a ``with`` block."""
        listener = EventListener(names, event_filter)
        with self.listen(listener):
            yield listener
