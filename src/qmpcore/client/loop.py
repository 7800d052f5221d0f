"""Choosing the event loop: asyncio's own or uvloop (``pip install "qmpcore[uvloop]"``).

::

    async def main() -> None:
        async with await qmpcore.connect("/run/vm1/qmp.sock") as qmp:
            print(await qmp.execute("query-status"))

    qmpcore.run(main())                  # uvloop when installed, else asyncio
    qmpcore.run(main(), loop="asyncio")  # asyncio's loop whatever is installed

The clients, :class:`~qmpcore.Fleet` and the embedded server only use the
public loop API, so they run on whichever loop is running; a program that
sets its own loop policy or calls ``uvloop.run()`` itself needs none of this.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LOOPS", "run", "new_event_loop", "loop_factory", "resolve_loop", "uvloop_available", "loop_name"]

T = TypeVar("T")

#: Names accepted by :func:`run` and :func:`new_event_loop`.
LOOPS = ("auto", "asyncio", "uvloop")
#: Environment variable giving the loop ``"auto"`` stands for (``asyncio`` or ``uvloop``).
LOOP_ENV = "QMPCORE_LOOP"

_MISSING = 'uvloop is not installed: pip install "qmpcore[uvloop]" (or choose loop="asyncio")'


def _uvloop() -> Any:
    """The uvloop module, or None when it cannot be imported."""
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


def uvloop_available() -> bool:
    """True when uvloop can be imported here."""
    return _uvloop() is not None


def resolve_loop(loop: str = "auto") -> str:
    """``"asyncio"`` or ``"uvloop"``: the loop that ``loop`` names here.

    ``"auto"`` is ``$QMPCORE_LOOP`` when set, else uvloop when installed,
    else asyncio.  Raises :class:`ValueError` for an unknown name and
    :class:`ImportError` when uvloop is asked for and not installed.
    """
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r}: choose one of {', '.join(LOOPS)}")
    if loop == "auto":
        chosen = os.environ.get(LOOP_ENV, "").strip().lower()
        if chosen and chosen != "auto":
            if chosen not in LOOPS:
                raise ValueError(f"{LOOP_ENV}={chosen!r} is not an event loop: choose one of {', '.join(LOOPS)}")
            return resolve_loop(chosen)
        return "uvloop" if uvloop_available() else "asyncio"
    if loop == "uvloop" and not uvloop_available():
        raise ImportError(_MISSING)
    return loop


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new event loop of the kind ``loop`` names."""
    if resolve_loop(loop) == "uvloop":
        factory: Callable[[], asyncio.AbstractEventLoop] = _uvloop().new_event_loop
        return factory
    return asyncio.new_event_loop


def new_event_loop(loop: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``loop`` names (see :func:`resolve_loop`)."""
    return loop_factory(loop)()


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the kind of ``loop`` (default: the running one)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto", debug: bool | None = None) -> T:
    """Run coroutine ``main`` on a new event loop and return its result.

    Like :func:`asyncio.run` (the loop is closed afterwards, remaining tasks
    cancelled, async generators and the default executor shut down), on the
    loop ``loop`` names: ``"auto"`` (uvloop when installed, unless
    ``$QMPCORE_LOOP`` says otherwise), ``"asyncio"`` or ``"uvloop"``.
    """
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()  # never awaited: close it rather than warn
        raise
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    return _run_310(main, factory(), debug)  # pragma: no cover (Python 3.10)


def _run_310(main: Coroutine[Any, Any, T], new: asyncio.AbstractEventLoop, debug: bool | None) -> T:
    """:func:`run` without :class:`asyncio.Runner` (Python 3.10)."""
    asyncio.set_event_loop(new)
    try:
        if debug is not None:
            new.set_debug(debug)
        return new.run_until_complete(main)
    finally:
        try:
            tasks = asyncio.all_tasks(new)
            for task in tasks:
                task.cancel()
            new.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            new.run_until_complete(new.shutdown_asyncgens())
            new.run_until_complete(new.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            new.close()
