"""Large dropped events let go of a slice per turn of the event loop.

Freeing a decoded frame frees every object in it, in one call: a 16 MiB
frame of small lists holds millions of them and takes a fifth of a second.
An event queue that drops an event of :data:`DISPOSE_SIZE` bytes or more
(its oldest, to stay within its byte budget) hands it here instead.  If
nothing else holds the event, its containers are emptied :data:`STEP`
elements per turn of the running loop, innermost ones taken apart the same
way, so that a peer's large events cost the loop a slice per turn even
when they go.  Values that something else still holds are left alone.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from typing import Any

__all__ = ["DISPOSE_SIZE", "STEP", "discard"]

#: Events whose frames had this many bytes or more are taken apart in steps.
DISPOSE_SIZE = 256 << 10
#: Elements let go of per step.
STEP = 2048

_state = threading.local()


def _probe(obj: object) -> int:
    return sys.getrefcount(obj)


# What sys.getrefcount() finds, in a function, for an argument that its
# caller passed on and holds no more (as discard() is called).
_ALONE = _probe(deque([object()]).popleft())


def discard(ev: Any, cost: int) -> None:
    """Let go of ``ev``, a dropped event whose frame cost ``cost`` bytes.

    Pass it straight from the queue (``discard(queue.popleft(), cost)``):
    it is taken apart only when this call holds its last reference.
    """
    if cost < DISPOSE_SIZE or sys.getrefcount(ev) != _ALONE:
        return
    raw = ev.raw
    del ev  # (the event goes; its message is this frame's last reference)
    if sys.getrefcount(raw) != 2:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # (no loop to spread the work over: freed now)
    stack: list[Any] | None = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(raw)
    if len(stack) == 1:
        loop.call_soon(_step, stack)


def _step(stack: list[Any]) -> None:
    """Empty containers of ``stack`` (the innermost first), ``STEP``
    elements at most; come back next turn while any is left."""
    budget = STEP
    while stack and budget > 0:
        obj = stack[-1]
        if not obj:
            stack.pop()
            continue
        n = min(len(obj), budget)
        budget -= n
        if type(obj) is dict:
            for _ in range(n):
                value = obj.popitem()[1]
                # (held by this frame alone: the local and the argument)
                if (type(value) is dict or type(value) is list) and value and sys.getrefcount(value) == 2:
                    stack.append(value)
        else:
            tail = obj[-n:]
            del obj[-n:]
            for value in tail:
                # (held by tail, the loop variable and the argument)
                if (type(value) is dict or type(value) is list) and value and sys.getrefcount(value) == 3:
                    stack.append(value)
            del tail
    if stack:
        asyncio.get_running_loop().call_soon(_step, stack)
