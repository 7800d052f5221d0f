"""Event queues, filters and routing shared by both clients (no I/O)."""

from __future__ import annotations

import pytest

from qmpcore.client.eventqueue import BLOCK, DROP_OLDEST, RAISE, EventOverflow, EventQueue, EventRouter, make_filter
from qmpcore.protocol.events import Event


def event(name: str, **data) -> Event:
    return Event(name, {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 500000}})


EVENTS = [event("E", n=i) for i in range(10)]


def test_event_fields():
    ev = event("STOP", a=1)
    assert (ev.name, ev.data, ev.timestamp) == ("STOP", {"a": 1}, 1.5)
    bare = Event("X", {"event": "X"})
    assert bare.data == {} and bare.timestamp is None


@pytest.mark.parametrize(
    "policy, sizes", [(DROP_OLDEST, (0, 1, 3, 10, 20)), (RAISE, (1, 3, 10, 20)), (BLOCK, (1, 3, 10, 20))]
)
def test_put_all_is_put_each(policy, sizes):
    for size in sizes:
        one, many = EventQueue(None, size, policy), EventQueue(None, size, policy)
        for chunk in (EVENTS[:4], EVENTS[4:], EVENTS):
            for ev in chunk:
                one.put(ev)
            many.put_all(list(chunk))
        assert list(one._items) == list(many._items)
        assert (one.dropped, one._overflow) == (many.dropped, many._overflow)


def test_drop_oldest():
    q = EventQueue(None, 3)
    q.put_all(EVENTS)
    assert q.dropped == 7 and [q.get_nowait().data["n"] for _ in range(3)] == [7, 8, 9]
    with pytest.raises(IndexError):
        q.get_nowait()


def test_raise_policy_reports_the_gap_then_goes_on():
    q = EventQueue(None, 3, RAISE)
    q.put_all(EVENTS)
    with pytest.raises(EventOverflow) as info:
        q.get_nowait()
    assert info.value.dropped == 7
    assert [q.get_nowait().data["n"] for _ in range(3)] == [0, 1, 2]


def test_block_policy_keeps_everything():
    q = EventQueue(None, 3, BLOCK)
    q.put_all(EVENTS)
    assert len(q) == 10 and q.dropped == 0


def test_closed_queue_drains_then_ends_or_raises():
    q = EventQueue(None, 5)
    q.put(EVENTS[0])
    q.close()
    assert q.get_nowait() is EVENTS[0] and q.get_nowait() is None
    failed = EventQueue(None, 5)
    failed.close(ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        failed.get_nowait()


@pytest.mark.parametrize("maxsize, policy", [(-1, DROP_OLDEST), (0, BLOCK), (0, RAISE)])
def test_bad_queue_options(maxsize, policy):
    with pytest.raises(ValueError):
        EventQueue(None, maxsize, policy)
    with pytest.raises(ValueError):
        EventQueue(None, 5, "never")


def test_filters():
    stop, job = event("STOP"), event("JOB", id="a", status="done")
    assert make_filter(()) is None
    assert make_filter(("STOP",))(stop) and not make_filter(("STOP",))(job)
    assert make_filter((), {"id": "a"})(job) and not make_filter((), {"id": "b"})(job)
    assert not make_filter((), {"missing": None})(job)
    assert make_filter(("JOB",), lambda ev: ev.data["status"] == "done")(job)
    with pytest.raises(TypeError):
        make_filter((1,))
    with pytest.raises(TypeError):
        make_filter((), 42)


def test_router_copies_to_subscriptions_and_keeps_a_backlog():
    router = EventRouter(backlog_maxsize=5)
    every = router.subscribe(None, 100)
    stops = router.subscribe(make_filter(("STOP",)), 100)
    router.deliver_all([event("STOP"), event("RESUME")])
    router.deliver(event("STOP"))
    assert len(every) == 3 and len(stops) == 2 and len(router.backlog) == 3
    # A waiter takes the oldest match from the backlog...
    waiter = router.wait_for(make_filter(("RESUME",)))
    assert waiter.get_nowait().name == "RESUME" and len(router.backlog) == 2
    # ...or the next matching event, which then skips the backlog.
    waiter = router.wait_for(make_filter(("SHUTDOWN",)))
    router.deliver_all([event("X"), event("SHUTDOWN"), event("Y")])
    assert waiter.get_nowait().name == "SHUTDOWN"
    assert [ev.name for ev in router.backlog._items] == ["STOP", "STOP", "X", "Y"]
    assert router.received == 6


def test_router_counts_drops_of_gone_subscriptions():
    router = EventRouter()
    q = router.subscribe(None, 2)
    router.deliver_all(EVENTS)
    router.unsubscribe(q)
    router.unsubscribe(q)  # twice is harmless
    assert router.dropped == 8


def test_router_close_ends_every_queue():
    router = EventRouter()
    q = router.subscribe(None, 5)
    waiter = router.wait_for(None)
    router.close(ConnectionError("lost"))
    for queue in (q, waiter, router.backlog):
        with pytest.raises(ConnectionError):
            queue.get_nowait()
    late = router.subscribe(None, 5)
    with pytest.raises(ConnectionError):
        late.get_nowait()


def test_a_synchronous_waiter_sees_every_event_of_a_big_batch():
    """A waiter that drains the queue when woken (as the fleet's listener does)."""
    q = EventQueue(None, 3)
    seen = []

    class Drain:
        def done(self) -> bool:
            return False

        def set_result(self, _) -> None:
            while q.ready():
                seen.append(q.get_nowait())
            q.waiter = self

    q.waiter = Drain()
    q.put_all(EVENTS)
    assert seen == EVENTS and q.dropped == 0


async def test_a_large_dropped_event_is_let_go_a_slice_per_turn(monkeypatch):
    """An event over DISPOSE_SIZE bytes that a queue drops is taken apart
    STEP elements per turn of the loop (freeing it at once can take a large
    part of a second), inner containers too; one that something else still
    holds, or any part of it still held, is left as it is."""
    import asyncio

    from qmpcore.client import disposal

    count = 10 * disposal.STEP
    held_inner = [1, 2, 3]

    def big(name: str) -> Event:
        items = [[i] for i in range(count)]  # one container per element
        items[5] = held_inner
        return Event(name, {"event": name, "data": {"items": items}})

    steps = []
    step = disposal._step

    def counted(stack):
        steps.append(len(stack))
        step(stack)

    monkeypatch.setattr(disposal, "_step", counted)
    cost = disposal.DISPOSE_SIZE
    q = EventQueue(None, 100, DROP_OLDEST, max_bytes=cost)
    kept = big("KEPT")  # (this test holds it: dropped, it stays whole)
    q.put(kept, cost)
    q.put(big("A"), cost)  # drops KEPT
    q.put(big("B"), cost)  # drops A: taken apart
    assert [ev.name for ev in q._items] == ["B"] and q.dropped == 2
    for _ in range(1000):
        if steps and not disposal._state.stack:
            break
        await asyncio.sleep(0)
    # A's outer list and its `count` inner ones, STEP elements a turn.
    assert len(steps) >= 2 * count // disposal.STEP, len(steps)
    assert not disposal._state.stack
    assert held_inner == [1, 2, 3]
    assert len(kept.data["items"]) == count and kept.data["items"][7] == [7]
    assert len(q.get_nowait().data["items"]) == count
