"""Scenario suite for the drop-in adapters: written once, run on every backend.

A *backend* is a set of three modules with the public API of a QMP library
generation: the asyncio API of ``qemu.qmp`` 0.0.6, its synchronous
``qemu.qmp.legacy`` wrapper, and the older standalone ``qmp.py``.  The
reference backend is the real packages; the ``qmpcore`` backend is
``qmpcore.compat``.  Each scenario drives one API against a real QEMU 7.2
and returns a *record*: every observable result, normalised so that
per-run values (timestamps, automatically assigned ids, fd numbers) do not
matter.  The tests compare the records of both backends value by value.

Also here: :class:`Lab`, which starts and always stops QEMU processes, and
:class:`EmbeddedServer`, qmpcore's QEMU-like server in a thread, for replies
QEMU does not send on request (20 MiB, two messages on one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from conftest import IN_CI

#: Upper bound for every wait in this suite; reaching it is a failure.
TIMEOUT = 20.0

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
QEMU_ARGS = ["-M", "none", "-nodefaults", "-display", "none", "-S"]


def require(condition: bool, why: str) -> None:
    """Skip locally, fail in CI, when something the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


def require_qemu() -> None:
    require(os.access(QEMU, os.X_OK), f"{QEMU} not found")


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------

#: API name -> (reference module, qmpcore module)
APIS = {
    "qemu_qmp": ("qemu.qmp", "qmpcore.compat.qemu_qmp"),
    "legacy": ("qemu.qmp.legacy", "qmpcore.compat.legacy"),
    "qmp": ("qmp", "qmpcore.compat.qmp"),
}
BACKENDS = ("reference", "qmpcore")


def load_api(backend: str, api: str) -> ModuleType:
    """Import one API module of one backend (a missing reference is skipped
    locally and fails in CI; a missing adapter always fails)."""
    reference, adapter = APIS[api]
    if backend == "reference":
        try:
            return importlib.import_module(reference)
        except ImportError:
            require(False, f"reference package {reference!r} is not installed")
    return importlib.import_module(adapter)


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

#: Explicit ids the scenarios choose start with this; others are automatic.
USER_ID = "user-"


#: Keys that make a mapping a QMP message (whose "id" may be automatic).
_MESSAGE_KEYS = {"execute", "exec-oob", "return", "error"}


def normalize(value: Any) -> Any:
    """Plain, comparable data: mappings become dicts, tuples lists, enums
    their names; timestamps and automatic message ids are masked."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "keys"):  # dict, Message, any Mapping
        is_message = not _MESSAGE_KEYS.isdisjoint(value.keys())
        out = {}
        for key in value.keys():
            item = value[key]
            if key == "timestamp":
                item = "<timestamp>"
            elif key == "id" and is_message and not (isinstance(item, str) and item.startswith(USER_ID)):
                item = "<auto>"
            out[key] = normalize(item)
        return out
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value"):  # Enum
        return value.name
    return repr(value)


def describe_error(exc: BaseException, api: ModuleType | None = None) -> dict:
    """What a caller can observe about an exception."""
    info: dict[str, Any] = {"type": type(exc).__name__, "str": str(exc)}
    if api is not None and hasattr(api, "QMPError"):
        info["is_QMPError"] = isinstance(exc, api.QMPError)
    for attr in ("error_class", "error_message", "state", "required"):
        if hasattr(exc, attr):
            info[attr] = normalize(getattr(exc, attr))
    if hasattr(exc, "exc"):
        info["exc"] = {"type": type(exc.exc).__name__, "str": str(exc.exc)}
        info["cause_is_exc"] = exc.__cause__ is exc.exc
    info["qmpcore_errors_shown"] = qmpcore_errors_in(exc)
    if type(exc).__name__ == "ExecuteError":
        info["sent"] = normalize(exc.sent)
        info["received"] = normalize(exc.received)
        info["error.error.class_"] = exc.error.error.class_
        info["error.error.desc"] = exc.error.error.desc
        info["error.id"] = normalize({"return": None, "id": exc.error.id})["id"]
    if hasattr(exc, "reply"):
        info["reply"] = normalize(exc.reply)
    return info


def qmpcore_errors_in(exc: BaseException) -> list[str]:
    """qmpcore's own exception classes (not the adapters') in what a caller
    sees of ``exc``: its type, ``.exc`` and the chain a traceback shows."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        module = type(item).__module__
        if module.startswith("qmpcore.") and not module.startswith("qmpcore.compat"):
            found.append(f"{module}.{type(item).__qualname__}")
        todo.append(item.__cause__)
        if not item.__suppress_context__:
            todo.append(item.__context__)
        inner = getattr(item, "exc", None)
        if isinstance(inner, BaseException):
            todo.append(inner)
    return found


def outcome(fn: Callable[[], Any], api: ModuleType | None = None) -> dict:
    """Run ``fn`` and record its value or its exception."""
    try:
        return {"ok": normalize(fn())}
    except Exception as exc:
        return {"raised": describe_error(exc, api)}


async def aoutcome(aw: Awaitable[Any], api: ModuleType | None = None) -> dict:
    """Await ``aw`` (bounded by :data:`TIMEOUT`) and record the outcome."""
    try:
        return {"ok": normalize(await within(aw))}
    except Exception as exc:
        return {"raised": describe_error(exc, api)}


async def within(aw: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(aw, timeout)


# --------------------------------------------------------------------------
# QEMU processes
# --------------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Qemu:
    """One ``qemu-system-x86_64 -M none`` with a QMP monitor.

    ``mode`` is ``"unix"`` (QEMU listens on a unix socket), ``"tcp"``
    (listens on 127.0.0.1) or ``"client"`` (QEMU connects to ``address``,
    where the test listens).  Always stopped by :class:`Lab`.
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        name: str,
        mode: str = "unix",
        pretty: bool = False,
        address: Any = None,
        machine: str = "none",
    ) -> None:
        self.mode = mode
        opts = ",pretty=on" if pretty else ""
        if mode == "unix":
            self.address = address or str(workdir / f"{name}.sock")
            chardev = f"socket,id=mon0,path={self.address},server=on,wait=off"
        elif mode == "tcp":
            self.address = ("127.0.0.1", free_tcp_port())
            host, port = self.address
            chardev = f"socket,id=mon0,host={host},port={port},server=on,wait=off"
        elif mode == "client":
            self.address = address
            chardev = f"socket,id=mon0,path={self.address}"
        else:
            raise ValueError(mode)
        self.log = workdir / f"{name}.log"
        args = (
            QEMU_ARGS if machine == "none" else [a if a != "none" else machine for a in QEMU_ARGS[:2]] + QEMU_ARGS[2:]
        )
        argv = [QEMU, *args, "-chardev", chardev, "-mon", f"chardev=mon0,mode=control{opts}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if mode != "client":
            self._wait_listening()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_listening(self) -> None:
        """Return once the monitor greets a probe connection."""
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {self.log.read_text()}")
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.settimeout(TIMEOUT)
                    probe.connect(self.address)
                    if probe.recv(1 << 16):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("QEMU monitor did not come up")
            time.sleep(0.02)

    def wait_exit(self) -> int:
        return self.proc.wait(TIMEOUT)

    def pause_process(self) -> None:
        """SIGSTOP: QEMU stays connected but stops answering."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume_process(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # also ends a SIGSTOPped process
        self.proc.wait(TIMEOUT)


class Lab:
    """Per-test workspace: QEMU processes and fake servers, always stopped."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self._stoppers: list[Callable[[], None]] = []
        self._count = 0

    def qemu(self, **kwargs: Any) -> Qemu:
        self._count += 1
        vm = Qemu(self.workdir, f"vm{self._count}", **kwargs)
        self._stoppers.append(vm.stop)
        return vm

    def spawn(self, argv: list[str], **popen: Any) -> subprocess.Popen:
        """Start a process that is killed (if still running) when the lab closes."""
        log = open(self.path(f"proc{len(self._stoppers)}.log"), "wb")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **popen)
        except BaseException:
            log.close()
            raise

        def stop() -> None:
            try:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(TIMEOUT)
            finally:
                log.close()

        self._stoppers.append(stop)
        return proc

    def embedded_server(self, handlers: dict[str, Handler]) -> EmbeddedServer:
        self._count += 1
        server = EmbeddedServer(str(self.workdir / f"embedded{self._count}.sock"), handlers)
        self._stoppers.append(server.stop)
        return server

    def path(self, name: str) -> str:
        return str(self.workdir / name)

    def close(self) -> None:
        errors = []
        for stop in reversed(self._stoppers):
            try:
                stop()
            except Exception as exc:
                errors.append(exc)
        self._stoppers.clear()
        if errors:
            raise errors[0]


@contextlib.contextmanager
def lab_for(workdir: pathlib.Path):
    lab = Lab(workdir)
    try:
        yield lab
    finally:
        lab.close()


# --------------------------------------------------------------------------
# qmpcore's embedded server, for replies QEMU will not produce on request
# --------------------------------------------------------------------------

#: A command handler gets the simulated VM and the call; returns the value.
Handler = Callable[[Any, Any], Any]


class EmbeddedServer:
    """``qmpcore.server.serve_vm`` on a unix socket, with extra command
    handlers, in a thread with its own event loop (so that blocking
    clients can talk to it too)."""

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.address = path
        self._handlers = handlers
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("embedded server did not start")
        if self._error is not None:
            raise self._error

    async def _serve(self) -> None:
        from qmpcore.server import serve_vm

        self._stopping = asyncio.Event()
        try:
            async with serve_vm(self.address) as vm:
                for name, handler in self._handlers.items():
                    vm.register(name, lambda call, handler=handler: handler(vm, call))
                self._ready.set()
                await self._stopping.wait()
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()


# --------------------------------------------------------------------------
# Scenario registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    api: str  # key of APIS
    func: Callable[..., Any]
    is_async: bool = field(default=False)


SCENARIOS: dict[str, Scenario] = {}


def scenario(api: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        SCENARIOS[func.__name__] = Scenario(func.__name__, api, func, asyncio.iscoroutinefunction(func))
        return func

    return register


def scenarios_for(*apis: str) -> list[str]:
    return [name for name, sc in SCENARIOS.items() if sc.api in apis]


# --------------------------------------------------------------------------
# qemu.qmp (asyncio) scenarios
# --------------------------------------------------------------------------


def _mask(value: Any, old: str, new: str) -> Any:
    """``value`` with every occurrence of ``old`` in its strings replaced."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _mask(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, old, new) for v in value]
    return value


async def _watch_runstates(client: Any, seen: list[str]) -> None:
    while True:
        seen.append((await client.runstate_changed()).name)


async def _connected_client(api: ModuleType, lab: Lab) -> tuple[Qemu, Any]:
    """A new QEMU and a ``QMPClient("vm")`` connected to it."""
    vm = lab.qemu()
    q = api.QMPClient("vm")
    await within(q.connect(vm.address))
    return vm, q


@scenario("qemu_qmp")
async def connect_unix(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    q = api.QMPClient("vm1")
    rec: dict[str, Any] = {}
    rec["idle"] = {
        "repr": repr(q),
        "name": q.name,
        "runstate": q.runstate.name,
        "greeting": q.greeting,
        "events": repr(q.events),
    }
    seen: list[str] = []
    watcher = asyncio.create_task(_watch_runstates(q, seen))
    await asyncio.sleep(0)
    try:
        rec["connect"] = await aoutcome(q.connect(vm.address), api)
        g = q.greeting
        rec["running"] = {
            "repr": repr(q),
            "runstate": q.runstate.name,
            "greeting_type": type(g).__name__,
            "greeting_repr": repr(g),
            "version": normalize(g.QMP.version),
            "capabilities": normalize(g.QMP.capabilities),
            "asdict": g._asdict(),
        }
        rec["connect_again"] = await aoutcome(q.connect(vm.address), api)
        rec["disconnect"] = await aoutcome(q.disconnect(), api)
        await asyncio.sleep(0)
    finally:
        watcher.cancel()
    rec["runstates"] = seen
    rec["after"] = {"runstate": q.runstate.name, "greeting_kept": q.greeting is not None}
    q.name = "renamed"
    rec["renamed"] = repr(q)
    return rec


@scenario("qemu_qmp")
async def connect_tcp(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu(mode="tcp")
    q = api.QMPClient()
    rec = {"connect": await aoutcome(q.connect(vm.address), api)}
    rec["status"] = await aoutcome(q.execute("query-status"), api)
    rec["send_fd_scm"] = outcome(lambda: q.send_fd_scm(0), api)
    rec["disconnect"] = await aoutcome(q.disconnect(), api)
    return rec


@scenario("qemu_qmp")
async def connect_failures(api: ModuleType, lab: Lab) -> dict:
    q = api.QMPClient("nowhere")
    rec = {"missing": await aoutcome(q.connect(lab.path("missing.sock")), api), "runstate": q.runstate.name}
    port = free_tcp_port()  # a TCP port nobody listens on
    refused = await aoutcome(q.connect(("127.0.0.1", port)), api)
    rec["refused"] = _mask(refused, str(port), "<port>")
    rec["execute_idle"] = await aoutcome(q.execute("query-status"), api)
    rec["send_fd_idle"] = outcome(lambda: q.send_fd_scm(0), api)
    rec["accept_idle"] = await aoutcome(q.accept(), api)
    rec["runstate_end"] = q.runstate.name
    return rec


@scenario("qemu_qmp")
async def execute_commands(api: ModuleType, lab: Lab) -> dict:
    _, q = await _connected_client(api, lab)
    rec: dict[str, Any] = {}
    for cmd in (
        "query-status",
        "query-name",
        "query-version",
        "query-kvm",
        "query-commands",
        "query-machines",
        "query-iothreads",
    ):
        rec[cmd] = await aoutcome(q.execute(cmd), api)
    rec["hmp"] = await aoutcome(q.execute("human-monitor-command", {"command-line": "info status"}), api)
    msg = q.make_execute_msg("query-status")
    rec["msg"] = {"type": type(msg).__name__, "dict": dict(msg), "bytes": bytes(msg)}
    rec["execute_msg"] = await aoutcome(q.execute_msg(msg), api)
    rec["msg_untouched"] = dict(msg)
    rec["make_oob"] = dict(api.QMPClient.make_execute_msg("query-yank", {"a": 1}, oob=True))
    rec["oob"] = await aoutcome(q.execute("query-yank", oob=True), api)
    rec["oob_msg"] = await aoutcome(q.execute_msg(q.make_execute_msg("query-yank", oob=True)), api)
    rec["not_a_command"] = await aoutcome(q.execute_msg(api.Message({"hello": 1})), api)
    rec["gather"] = normalize(
        await within(
            asyncio.gather(
                *(q.execute("query-status") for _ in range(8)),
                q.execute("query-name"),
                q.execute("query-yank", oob=True),
            )
        )
    )
    rec["disconnect"] = await aoutcome(q.disconnect(), api)
    return rec


@scenario("qemu_qmp")
async def execute_errors(api: ModuleType, lab: Lab) -> dict:
    _, q = await _connected_client(api, lab)
    rec: dict[str, Any] = {}
    rec["not_found"] = await aoutcome(q.execute("no-such-command"), api)
    rec["bad_argument"] = await aoutcome(q.execute("query-status", {"bogus": 1}), api)
    rec["missing_argument"] = await aoutcome(q.execute("getfd"), api)
    rec["device_not_found"] = await aoutcome(q.execute("device_del", {"id": "nope"}), api)
    rec["wrong_type"] = await aoutcome(q.execute("closefd", {"fdname": 5}), api)
    rec["oob_not_allowed"] = await aoutcome(q.execute("query-status", oob=True), api)
    rec["still_running"] = await aoutcome(q.execute("query-name"), api)
    try:
        await within(q.execute("no-such-command"))
    except api.ExecuteError as exc:
        rec["catch"] = {
            "QMPError": isinstance(exc, api.QMPError),
            "sent_type": type(exc.sent).__name__,
            "received_type": type(exc.received).__name__,
            "error_type": type(exc.error).__name__,
            "args_len": len(exc.args),
        }
    rec["disconnect"] = await aoutcome(q.disconnect(), api)
    return rec


def _event_names(events: Any) -> list[str]:
    return [e["event"] for e in events]


@scenario("qemu_qmp")
async def events(api: ModuleType, lab: Lab) -> dict:
    _, q = await _connected_client(api, lab)
    await within(q.execute("cont"))  # -S: start paused, then run
    q.events.clear()
    rec: dict[str, Any] = {
        "default": {
            "type": type(q.events).__name__,
            "names": sorted(q.events.names),
            "filter": q.events.event_filter,
            "repr": repr(q.events),
        }
    }

    def only_resume(event: Any) -> bool:
        return event["event"] == "RESUME"

    with q.listener("STOP") as stop_l:
        with q.listener(("STOP", "RESUME"), event_filter=only_resume) as resume_l:
            rec["stop"] = await aoutcome(q.execute("stop"), api)
            # STOP arrives before the reply to "stop": already delivered.
            rec["delivered_before_reply"] = [not stop_l.empty(), not q.events.empty(), resume_l.empty()]
            rec["cont"] = await aoutcome(q.execute("cont"), api)
            rec["reprs"] = [repr(stop_l), sorted(stop_l.names), sorted(resume_l.names)]
            got = await within(stop_l.get())
            rec["stop_l_get"] = {
                "type": type(got).__name__,
                "event": normalize(got),
                "is_Message": isinstance(got, api.Message),
                "keys": sorted(got.keys()),
            }
            rec["resume_l_get"] = normalize(await within(resume_l.get()))
            rec["history"] = [
                _event_names(stop_l.history),
                _event_names(resume_l.history),
                type(stop_l.history).__name__,
            ]
            await within(q.execute("stop"))
            # leaving the block clears what is still pending
        rec["resume_l_cleared"] = [resume_l.empty(), len(resume_l.history)]
    rec["stop_l_cleared"] = [stop_l.empty(), _event_names(stop_l.history)]
    rec["default_events"] = _event_names(q.events.clear())
    rec["default_history"] = _event_names(q.events.history)

    # Explicit registration, iteration, errors.
    listener = api.EventListener("STOP")
    q.register_listener(listener)
    rec["register_twice"] = outcome(lambda: q.register_listener(listener), api)
    rec["remove_default"] = outcome(lambda: q.remove_listener(q.events), api)
    await within(q.execute("cont"))
    await within(q.execute("stop"))
    await within(q.execute("cont"))
    await within(q.execute("stop"))
    seen = []
    async for event in listener:
        seen.append(normalize(event))
        if len(seen) == 2:
            break
    rec["async_for"] = seen
    q.remove_listener(listener)
    rec["remove_twice"] = outcome(lambda: q.remove_listener(listener), api)

    a, b = api.EventListener(), api.EventListener(["RESUME"])
    with q.listen(a, b):
        await within(q.execute("cont"))
        rec["listen"] = [_event_names(a.clear()), _event_names(b.clear())]
    try:
        with q.listen(a, a):
            pass
    except Exception as exc:
        rec["listen_same_twice"] = describe_error(exc, api)
    rec["listen_rolled_back"] = outcome(lambda: q.remove_listener(a), api)
    rec["default_at_end"] = _event_names(q.events.clear())
    rec["disconnect"] = await aoutcome(q.disconnect(), api)
    return rec


async def _until_runstate(q: Any, name: str) -> None:
    while q.runstate.name != name:
        await within(q.runstate_changed())


@scenario("qemu_qmp")
async def disconnect_reconnect(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    q = api.QMPClient("vm")
    rec: dict[str, Any] = {}
    await within(q.connect(vm.address))
    rec["first"] = await aoutcome(q.execute("query-name"), api)
    rec["disconnect"] = await aoutcome(q.disconnect(), api)
    rec["disconnect_again"] = await aoutcome(q.disconnect(), api)
    rec["execute_after"] = await aoutcome(q.execute("query-name"), api)
    rec["reconnect"] = await aoutcome(q.connect(vm.address), api)
    rec["greeting"] = q.greeting._asdict()
    rec["second"] = await aoutcome(q.execute("query-status"), api)
    # The server goes away: "quit" is answered, then QEMU hangs up.
    rec["quit"] = await aoutcome(q.execute("quit"), api)
    await _until_runstate(q, "DISCONNECTING")
    rec["execute_disconnecting"] = await aoutcome(q.execute("query-name"), api)
    rec["disconnect_after_eof"] = await aoutcome(q.disconnect(), api)
    rec["runstate"] = q.runstate.name
    rec["events"] = normalize(q.events.clear())
    vm.wait_exit()
    rec["connect_dead"] = await aoutcome(q.connect(vm.address), api)
    vm2 = lab.qemu()
    rec["connect_new"] = await aoutcome(q.connect(vm2.address), api)
    rec["third"] = await aoutcome(q.execute("query-status"), api)
    rec["end"] = await aoutcome(q.disconnect(), api)
    return rec


@scenario("qemu_qmp")
async def interrupted_execute(api: ModuleType, lab: Lab) -> dict:
    vm, q = await _connected_client(api, lab)
    vm.pause_process()
    pending = asyncio.ensure_future(q.execute("query-status"))
    await asyncio.sleep(0.05)  # let the command reach the socket
    vm.stop()
    rec = {"pending": await aoutcome(pending, api)}
    try:
        await within(q.disconnect())
        rec["disconnect"] = "no error"
    except (EOFError, OSError):
        rec["disconnect"] = "EOFError or OSError"  # which one is up to the kernel
    rec["runstate"] = q.runstate.name
    return rec


@scenario("qemu_qmp")
async def fd_passing(api: ModuleType, lab: Lab) -> dict:
    _, q = await _connected_client(api, lab)
    rec: dict[str, Any] = {}
    rec["getfd_without_fd"] = await aoutcome(q.execute("getfd", {"fdname": "fd1"}), api)
    with open(lab.path("passed.txt"), "w") as f:
        rec["send"] = outcome(lambda: q.send_fd_scm(f.fileno()), api)
        rec["getfd"] = await aoutcome(q.execute("getfd", {"fdname": "fd1"}), api)
        rec["closefd"] = await aoutcome(q.execute("closefd", {"fdname": "fd1"}), api)
        rec["closefd_again"] = await aoutcome(q.execute("closefd", {"fdname": "fd1"}), api)
        q.send_fd_scm(f.fileno())
        added = await within(q.execute("add-fd", {"fdset-id": 3, "opaque": "x"}))
        rec["add_fd"] = sorted(added)
        fdsets = await within(q.execute("query-fdsets"))
        rec["fdsets"] = [[s["fdset-id"], [fd["opaque"] for fd in s["fds"]]] for s in fdsets]
        rec["fd_still_open"] = not f.closed and os.fstat(f.fileno()) is not None
    rec["disconnect"] = await aoutcome(q.disconnect(), api)
    return rec


@scenario("qemu_qmp")
async def server_mode(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    path = lab.path("listen.sock")
    q = api.QMPClient("server")
    rec["start_server"] = await aoutcome(q.start_server(path), api)
    rec["listening_state"] = q.runstate.name
    lab.qemu(mode="client", address=path)
    rec["accept"] = await aoutcome(q.accept(), api)
    rec["greeting"] = q.greeting._asdict()
    rec["status"] = await aoutcome(q.execute("query-status"), api)
    rec["disconnect"] = await aoutcome(q.disconnect(), api)

    path2 = lab.path("listen2.sock")
    q2 = api.QMPClient("server2")
    task = asyncio.ensure_future(q2.start_server_and_accept(path2))
    while q2.runstate.name != "CONNECTING" or not os.path.exists(path2):
        await within(asyncio.sleep(0.01))
    lab.qemu(mode="client", address=path2)
    rec["start_server_and_accept"] = await aoutcome(task, api)
    rec["status2"] = await aoutcome(q2.execute("query-name"), api)
    rec["disconnect2"] = await aoutcome(q2.disconnect(), api)
    return rec


# --------------------------------------------------------------------------
# qemu.qmp.legacy scenarios (blocking)
# --------------------------------------------------------------------------


@scenario("legacy")
def legacy_commands(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    rec: dict[str, Any] = {}
    with api.QEMUMonitorProtocol(vm.address, nickname="vm") as mon:
        rec["connect"] = outcome(mon.connect, api)
        rec["cmd"] = outcome(lambda: mon.cmd("query-status"), api)
        rec["cmd_kwargs"] = outcome(lambda: mon.cmd("human-monitor-command", **{"command-line": "info status"}), api)
        rec["cmd_error"] = outcome(lambda: mon.cmd("no-such-command"), api)
        rec["cmd_bad_arg"] = outcome(lambda: mon.cmd("query-status", bogus=1), api)
        rec["cmd_raw"] = outcome(lambda: mon.cmd_raw("query-status"), api)
        rec["cmd_raw_empty_args"] = outcome(lambda: mon.cmd_raw("query-name", {}), api)
        rec["cmd_raw_args"] = outcome(
            lambda: mon.cmd_raw("human-monitor-command", {"command-line": "info version"}), api
        )
        rec["cmd_raw_error"] = outcome(lambda: mon.cmd_raw("no-such-command"), api)
        rec["cmd_obj"] = outcome(lambda: mon.cmd_obj({"execute": "query-name", "id": USER_ID + "1"}), api)
        rec["cmd_obj_no_id"] = outcome(lambda: mon.cmd_obj({"execute": "query-kvm"}), api)
        rec["cmd_obj_error"] = outcome(lambda: mon.cmd_obj({"execute": "getfd", "id": USER_ID + "2"}), api)
        rec["cmd_obj_oob"] = outcome(lambda: mon.cmd_obj({"exec-oob": "query-yank", "id": USER_ID + "3"}), api)
        rec["cmd_obj_reserved_id"] = outcome(lambda: mon.cmd_obj({"execute": "query-name", "id": "__qmp#00001"}), api)
        rec["cmd_obj_int_id"] = outcome(lambda: mon.cmd_obj({"execute": "query-name", "id": 7}), api)
        mon.settimeout(TIMEOUT)
        rec["with_timeout"] = outcome(lambda: mon.cmd("query-name"), api)
        mon.settimeout(None)
        rec["no_timeout"] = outcome(lambda: mon.cmd("query-name"), api)
    rec["after_close"] = outcome(lambda: mon.cmd("query-name"), api)
    rec["close_twice"] = outcome(mon.close, api)
    return rec


def _first_events(api: ModuleType, mon: Any, rec: dict[str, Any]) -> None:
    """Connect, then record polling with no event and with one (STOP)."""
    mon.connect()
    mon.cmd("cont")
    mon.clear_events()
    rec["none_yet"] = outcome(mon.pull_event, api)
    rec["none_list"] = outcome(mon.get_events, api)
    mon.cmd("stop")  # STOP arrives before the reply and is kept
    rec["pull"] = outcome(mon.pull_event, api)


@scenario("legacy")
def legacy_events(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    rec: dict[str, Any] = {}
    mon = api.QEMUMonitorProtocol(vm.address)
    try:
        _first_events(api, mon, rec)
        rec["pull_empty"] = outcome(lambda: mon.pull_event(False), api)
        mon.cmd("cont")
        mon.cmd("stop")
        rec["get_events"] = outcome(mon.get_events, api)
        rec["get_events_cleared"] = outcome(mon.get_events, api)
        mon.cmd("cont")
        rec["pull_wait_true"] = outcome(lambda: mon.pull_event(wait=True), api)
        mon.cmd("stop")
        rec["pull_wait_float"] = outcome(lambda: mon.pull_event(wait=TIMEOUT), api)
        mon.cmd("cont")
        rec["get_wait_float"] = outcome(lambda: mon.get_events(wait=TIMEOUT), api)
        mon.cmd("stop")
        mon.cmd("cont")
        mon.clear_events()
        rec["cleared"] = outcome(mon.get_events, api)
        rec["pull_timeout"] = outcome(lambda: mon.pull_event(wait=0.05), api)
        rec["get_timeout"] = outcome(lambda: mon.get_events(wait=0.05), api)
        rec["usable_after_timeout"] = outcome(lambda: mon.cmd("query-name"), api)
        try:
            mon.pull_event(wait=0.05)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # two classes before Python 3.11
            rec["timeout_is_asyncio"] = isinstance(exc, asyncio.TimeoutError)
        rec["quit"] = outcome(lambda: mon.cmd("quit"), api)
        rec["shutdown"] = outcome(lambda: mon.pull_event(wait=TIMEOUT), api)
    finally:
        with contextlib.suppress(EOFError, OSError):
            mon.close()
    return rec


@scenario("legacy")
def legacy_negotiation(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    with contextlib.closing(api.QEMUMonitorProtocol(lab.qemu().address)) as mon:
        rec["connect"] = outcome(lambda: mon.connect(negotiate=False), api)
        rec["before_caps"] = outcome(lambda: mon.cmd("query-status"), api)
        rec["caps"] = outcome(lambda: mon.cmd("qmp_capabilities"), api)
        rec["after_caps"] = outcome(lambda: mon.cmd("query-status"), api)
    return rec


@scenario("legacy")
def legacy_fd_passing(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    rec: dict[str, Any] = {}
    with api.QEMUMonitorProtocol(vm.address) as mon:
        mon.connect()
        with open(lab.path("passed.txt"), "w") as f:
            rec["send"] = outcome(lambda: mon.send_fd_scm(f.fileno()), api)
            rec["getfd"] = outcome(lambda: mon.cmd("getfd", fdname="fd1"), api)
            rec["closefd"] = outcome(lambda: mon.cmd("closefd", fdname="fd1"), api)
            rec["closefd_again"] = outcome(lambda: mon.cmd("closefd", fdname="fd1"), api)
    return rec


def _server_mode(api: ModuleType, lab: Lab, rec: dict[str, Any], steps: dict[str, str]) -> None:
    """Listen, let QEMU connect to us, then record ``mon.cmd``/``mon.command`` calls."""
    path = lab.path("listen.sock")
    mon = api.QEMUMonitorProtocol(path, server=True)
    try:
        lab.qemu(mode="client", address=path)
        rec["accept"] = outcome(lambda: mon.accept(timeout=TIMEOUT), api)
        for key, command in steps.items():
            rec[key] = outcome(lambda: getattr(mon, key)(command), api)  # noqa: B023 (called within this iteration)
    finally:
        mon.close()


@scenario("legacy")
def legacy_server_mode(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    _server_mode(api, lab, rec, {"cmd": "query-status"})
    # qemu.qmp's __del__ trips over the half-built object: keep that quiet.
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        with socket.socket(socket.AF_UNIX) as s:
            rec["server_with_socket"] = outcome(lambda: api.QEMUMonitorProtocol(s, server=True), api)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    return rec


@scenario("legacy")
def legacy_socket_object(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    rec: dict[str, Any] = {}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(vm.address)
    mon = api.QEMUMonitorProtocol(sock)
    try:
        rec["connect"] = outcome(mon.connect, api)
        rec["cmd"] = outcome(lambda: mon.cmd("query-name"), api)
    finally:
        mon.close()
        sock.close()
    return rec


@scenario("legacy")
def legacy_tcp(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu(mode="tcp")
    host, port = vm.address
    rec: dict[str, Any] = {}
    address = api.QEMUMonitorProtocol.parse_address(f"{host}:{port}")
    rec["address"] = [address == (host, port), type(address).__name__]
    with api.QEMUMonitorProtocol(address) as mon:
        rec["connect"] = outcome(mon.connect, api)
        rec["cmd"] = outcome(lambda: mon.cmd("query-status"), api)
        rec["send_fd_scm"] = outcome(lambda: mon.send_fd_scm(0), api)
    return rec


# --------------------------------------------------------------------------
# QEMU's own tools: QEMUMachine (python/qemu/machine, QEMU 8.2) and the
# calls qmp-shell and qmp_tui make
# --------------------------------------------------------------------------


class _Records(logging.Handler):
    """Collects (level, message) of WARNING and above; exception names
    lose their module (qemu.qmp's and the adapters' differ)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = re.sub(r"\b(?:qemu\.qmp|qmpcore\.compat)[\w.]*\.(\w+)", r"\1", record.getMessage())
        self.seen.append([record.levelname, message])


@contextlib.contextmanager
def logged(rec: dict[str, Any], key: str = "logged"):
    """Record what both libraries log at WARNING and above in ``rec[key]``."""
    handler = _Records()
    loggers = [logging.getLogger("qemu.qmp"), logging.getLogger("qmpcore")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        rec[key] = handler.seen


class Machine:
    """A VM driven through the legacy API with the calls QEMU 8.2's
    ``QEMUMachine`` makes, in its order (written here from reading it):

    * launch: a socketpair (QEMU gets one end as ``-chardev socket,fd=``)
      and ``QEMUMonitorProtocol(sock, server=False, nickname=...)`` then
      ``connect()``; or, with ``monitor_address``, ``server=True`` and
      ``accept(qmp_timer)`` after starting QEMU;
    * ``qmp()`` is ``cmd_raw(name, args=...)``, ``command()`` is ``cmd()``;
    * events: ``pull_event(wait=...)`` / ``get_events(wait=...)``, events
      that do not match kept aside;
    * shutdown: ``qmp("quit")`` unless issued, then ``close()`` (EOFError
      expected once quit was issued), then wait for the process.
    """

    def __init__(
        self,
        api: ModuleType,
        lab: Lab,
        args: list[str] | None = None,
        monitor_address: str | None = None,
        qmp_timer: float = TIMEOUT,
    ) -> None:
        self.api = api
        self.lab = lab
        self.args = QEMU_ARGS if args is None else args
        self.monitor_address = monitor_address
        self.qmp_timer = qmp_timer
        self.mon: Any = None
        self.proc: subprocess.Popen | None = None
        self.quit_issued = False
        self.events: list[dict] = []

    def launch(self) -> None:
        pair = None
        if self.monitor_address is None:
            pair = socket.socketpair()
            chardev = f"socket,id=mon,fd={pair[0].fileno()}"
            target: Any = pair[1]
        else:
            chardev = f"socket,id=mon,path={self.monitor_address}"
            target = self.monitor_address
        self.mon = self.api.QEMUMonitorProtocol(target, server=self.monitor_address is not None, nickname="vm")
        argv = [QEMU, "-display", "none", "-chardev", chardev, "-mon", "chardev=mon,mode=control", *self.args]
        try:
            self.proc = self.lab.spawn(argv, pass_fds=[pair[0].fileno()] if pair else [])
        finally:
            if pair is not None:
                pair[0].close()
        if pair is not None:
            self.mon.connect()
        else:
            self.mon.accept(self.qmp_timer)

    def qmp(self, cmd: str, **args: Any) -> dict:
        ret = self.mon.cmd_raw(cmd, args={k.replace("_", "-"): v for k, v in args.items()})
        if cmd == "quit" and "error" not in ret and "return" in ret:
            self.quit_issued = True
        return ret

    def command(self, cmd: str, **args: Any) -> Any:
        ret = self.mon.cmd(cmd, **{k.replace("_", "-"): v for k, v in args.items()})
        if cmd == "quit":
            self.quit_issued = True
        return ret

    def get_qmp_event(self, wait: bool | float = False) -> dict | None:
        if self.events:
            return self.events.pop(0)
        return self.mon.pull_event(wait=wait)

    def get_qmp_events(self, wait: bool | float = False) -> list[dict]:
        events = self.mon.get_events(wait=wait)
        events.extend(self.events)
        del self.events[:]
        return events

    def event_wait(self, name: str, timeout: float = 60.0) -> dict | None:
        for event in self.events:
            if event["event"] == name:
                self.events.remove(event)
                return event
        while True:
            event = self.mon.pull_event(wait=timeout)
            if event is None:
                return None
            if event["event"] == name:
                return event
            self.events.append(event)

    def close_connection(self) -> str:
        """What closing the monitor raised ("" for nothing).  After ``quit``
        an EOFError is expected and dropped, as QEMUMachine does (whether
        qemu.qmp raises it then depends on when its reader saw the end)."""
        try:
            self.mon.close()
        except EOFError:
            return "" if self.quit_issued else "EOFError"
        return ""

    def shutdown(self) -> dict:
        rec: dict[str, Any] = {}
        if not self.quit_issued:
            rec["quit"] = outcome(lambda: self.qmp("quit"), self.api)
        rec["close"] = self.close_connection()
        assert self.proc is not None
        rec["exit"] = self.proc.wait(TIMEOUT)
        return rec


@scenario("legacy")
def machine_lifecycle(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    vm = Machine(api, lab)
    with logged(rec):
        rec["launch"] = outcome(vm.launch, api)
        rec["qmp"] = outcome(lambda: vm.qmp("query-status"), api)
        rec["qmp_args"] = outcome(lambda: vm.qmp("qom-get", path="/machine", property="type"), api)
        rec["qmp_error"] = outcome(lambda: vm.qmp("no-such-command"), api)
        rec["command"] = outcome(lambda: vm.command("query-name"), api)
        rec["command_error"] = outcome(lambda: vm.command("device_del", id="nope"), api)
        rec["no_event"] = outcome(lambda: vm.get_qmp_event(wait=False), api)
        rec["cont"] = outcome(lambda: vm.command("cont"), api)
        rec["stop"] = outcome(lambda: vm.command("stop"), api)
        rec["event_wait_stop"] = outcome(lambda: vm.event_wait("STOP", timeout=TIMEOUT), api)
        rec["events_kept_aside"] = normalize(vm.events)
        rec["get_qmp_event_kept"] = outcome(lambda: vm.get_qmp_event(wait=False), api)
        rec["event_wait_none"] = outcome(lambda: vm.event_wait("RESET", timeout=0.1), api)
        vm.command("cont")
        rec["get_qmp_events"] = outcome(lambda: vm.get_qmp_events(wait=TIMEOUT), api)
        with open(lab.path("passed.txt"), "w") as f:
            rec["send_fd_scm"] = outcome(lambda: vm.mon.send_fd_scm(f.fileno()), api)
            rec["getfd"] = outcome(lambda: vm.command("getfd", fdname="fd0"), api)
        rec["shutdown"] = vm.shutdown()
        rec["shutdown_event"] = outcome(lambda: vm.get_qmp_events(wait=False), api)
    return rec


def _kill_qemu(vm: Machine) -> None:
    """QEMU dies under a launched machine's connection (SIGKILL, reaped)."""
    assert vm.proc is not None
    vm.proc.kill()
    vm.proc.wait(TIMEOUT)
    time.sleep(0.1)  # the hangup reaches the monitor's socket


@scenario("legacy")
def machine_vm_dies(api: ModuleType, lab: Lab) -> dict:
    """QEMU is killed under the connection: QEMUMachine's next calls."""
    rec: dict[str, Any] = {}
    vm = Machine(api, lab)
    with logged(rec):
        vm.launch()
        vm.command("query-status")
        _kill_qemu(vm)
        rec["first"] = outcome(lambda: vm.qmp("query-status"), api)
        rec["second"] = outcome(lambda: vm.command("query-status"), api)
        rec["event"] = outcome(lambda: vm.get_qmp_event(wait=False), api)
        rec["event_wait"] = outcome(lambda: vm.event_wait("SHUTDOWN", timeout=0.2), api)
        rec["get_qmp_events"] = outcome(lambda: vm.get_qmp_events(wait=False), api)
        rec["send_fd_scm"] = outcome(lambda: vm.mon.send_fd_scm(0), api)
        rec["quit"] = outcome(lambda: vm.qmp("quit"), api)
        rec["close"] = vm.close_connection()
        rec["close_again"] = outcome(vm.mon.close, api)
    return rec


@scenario("legacy")
def machine_vm_dies_idle(api: ModuleType, lab: Lab) -> dict:
    """QEMU is killed while QEMUMachine polls for events: then commands."""
    rec: dict[str, Any] = {}
    vm = Machine(api, lab)
    with logged(rec):
        vm.launch()
        _kill_qemu(vm)
        rec["event"] = outcome(lambda: vm.get_qmp_event(wait=False), api)
        rec["command"] = outcome(lambda: vm.command("query-status"), api)
        rec["close"] = vm.close_connection()
    return rec


@scenario("legacy")
def machine_timeouts(api: ModuleType, lab: Lab) -> dict:
    """A command times out (QEMU stopped with SIGSTOP); its reply comes late."""
    rec: dict[str, Any] = {}
    vm = Machine(api, lab)
    with logged(rec):
        vm.launch()
        assert vm.proc is not None
        vm.mon.settimeout(0.3)
        os.kill(vm.proc.pid, signal.SIGSTOP)
        try:
            rec["command"] = outcome(lambda: vm.command("query-status"), api)
            rec["qmp"] = outcome(lambda: vm.qmp("query-name"), api)
        finally:
            os.kill(vm.proc.pid, signal.SIGCONT)
        vm.mon.settimeout(TIMEOUT)
        rec["after"] = outcome(lambda: vm.command("query-name"), api)
        rec["after_qmp"] = outcome(lambda: vm.qmp("query-status"), api)
        rec["shutdown"] = vm.shutdown()
    return rec


@scenario("legacy")
def machine_launch_failures(api: ModuleType, lab: Lab) -> dict:
    """QEMU exits at once (a bad option): what launch() sees and logs."""
    rec: dict[str, Any] = {}
    bad = [*QEMU_ARGS, "-no-such-option"]
    vm = Machine(api, lab, args=bad)
    with logged(rec, "socketpair_logged"):
        rec["socketpair"] = outcome(vm.launch, api)
        rec["socketpair_close"] = outcome(vm.mon.close, api)
    vm = Machine(api, lab, args=bad, monitor_address=lab.path("mon.sock"), qmp_timer=0.5)
    with logged(rec, "server_logged"):
        rec["server"] = outcome(vm.launch, api)
        rec["server_close"] = outcome(vm.mon.close, api)
    return rec


@scenario("legacy")
def machine_server_mode(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    vm = Machine(api, lab, monitor_address=lab.path("mon.sock"))
    with logged(rec):
        rec["launch"] = outcome(vm.launch, api)
        rec["command"] = outcome(lambda: vm.command("query-status"), api)
        rec["shutdown"] = vm.shutdown()
    return rec


@scenario("legacy")
def shell_calls(api: ModuleType, lab: Lab) -> dict:
    """The calls qmp-shell's QMPShell makes, from a subclass that keeps the
    greeting in ``_greeting`` as QMPShell does."""

    class Shell(api.QEMUMonitorProtocol):  # type: ignore[name-defined,misc]
        def __init__(self, address: Any) -> None:
            super().__init__(address, server=False)
            self._greeting: dict | None = None
            self._transmode = False

        def connect(self, negotiate: bool = True) -> None:  # type: ignore[override]
            self._greeting = super().connect(negotiate)

    vm = lab.qemu()
    rec: dict[str, Any] = {}
    with logged(rec):
        rec["parse_address"] = [normalize(api.QEMUMonitorProtocol.parse_address(a)) for a in ("sock", "h:4444")]
        rec["bad_port"] = outcome(lambda: api.QEMUMonitorProtocol.parse_address("h:x"), api)
        with Shell(api.QEMUMonitorProtocol.parse_address(vm.address)) as shell:
            rec["greeting_before"] = shell._greeting
            rec["connect"] = outcome(shell.connect, api)
            rec["greeting"] = normalize(shell._greeting)
            names = shell.cmd("query-commands")
            rec["completion"] = [isinstance(names, list), "query-status" in [c["name"] for c in names]]
            rec["cmd_obj"] = outcome(lambda: shell.cmd_obj({"execute": "query-status", "arguments": {}}), api)
            rec["cmd_obj_error"] = outcome(
                lambda: shell.cmd_obj({"execute": "query-status", "arguments": {"x": 1}}), api
            )
            rec["transaction"] = outcome(
                lambda: shell.cmd_obj({"execute": "transaction", "arguments": {"actions": []}}), api
            )
            rec["hmp"] = outcome(
                lambda: shell.cmd_obj(
                    {
                        "execute": "human-monitor-command",
                        "arguments": {"command-line": "info status", "cpu-index": 0},
                    }
                ),
                api,
            )
            shell.cmd_obj({"execute": "cont", "arguments": {}})
            shell.cmd_obj({"execute": "stop", "arguments": {}})
            rec["events"] = outcome(shell.get_events, api)
            rec["greeting_after"] = normalize(shell._greeting)
    return rec


@scenario("qemu_qmp")
async def tui_calls(api: ModuleType, lab: Lab) -> dict:
    """The calls qmp_tui's App makes: a QMPClient subclass with message
    hooks, ``_raw`` with and without assigned ids, reconnecting."""
    shown: list[list[Any]] = []

    class App(api.QMPClient):  # type: ignore[name-defined,misc]
        def __init__(self, address: Any) -> None:
            self.address = address  # App's own attributes, set before the base's
            self.retry = False
            self.exiting = False
            super().__init__()

        def _cb_outbound(self, msg: Any) -> Any:
            shown.append(["out", normalize(msg), type(msg).__name__])
            return msg

        def _cb_inbound(self, msg: Any) -> Any:
            shown.append(["in", normalize(msg), type(msg).__name__])
            return msg

    vm = lab.qemu()
    rec: dict[str, Any] = {}
    app = App(vm.address)
    with logged(rec):
        rec["connect"] = await aoutcome(app.connect(app.address), api)
        rec["address_kept"] = app.address == vm.address
        raw = api.Message(b'{"execute": "query-status"}')
        rec["raw_assigned"] = await aoutcome(app._raw(raw, assign_id="id" not in raw), api)
        rec["raw_own_id"] = await aoutcome(
            app._raw({"execute": "query-name", "id": USER_ID + "1"}, assign_id=False), api
        )
        rec["raw_no_id"] = await aoutcome(app._raw({"execute": "query-kvm"}, assign_id=False), api)
        rec["raw_error"] = await aoutcome(app._raw({"execute": "no-such-command"}), api)
        rec["raw_int_id"] = await aoutcome(app._raw({"execute": "query-kvm", "id": 5}, assign_id=False), api)
        rec["raw_reserved_id"] = await aoutcome(
            app._raw({"execute": "query-kvm", "id": "__qmp#1"}, assign_id=False), api
        )
        first = asyncio.ensure_future(app._raw({"execute": "query-status", "id": USER_ID + "dup"}, assign_id=False))
        await asyncio.sleep(0)
        rec["raw_id_in_use"] = await aoutcome(
            app._raw({"execute": "query-name", "id": USER_ID + "dup"}, assign_id=False), api
        )
        rec["raw_first"] = await aoutcome(first, api)
        rec["execute"] = await aoutcome(app.execute("query-name"), api)
        rec["execute_error"] = await aoutcome(app.execute("device_del", {"id": "nope"}), api)
        await within(app.execute("cont"))
        rec["stop"] = await aoutcome(app.execute("stop"), api)
        rec["events"] = _event_names(app.events.clear())
        rec["quit"] = await aoutcome(app._raw({"execute": "quit"}), api)
        await within(_until_runstate(app, "DISCONNECTING"))
        rec["after_quit"] = app.runstate.name
        try:
            await within(app.disconnect())
            rec["disconnect"] = "no error"
        except (OSError, EOFError) as exc:
            rec["disconnect"] = type(exc).__name__
        await asyncio.get_running_loop().run_in_executor(None, vm.wait_exit)  # its socket is gone then
        rec["reconnect"] = await aoutcome(app.connect(app.address), api)
        rec["raw_idle"] = await aoutcome(app._raw({"execute": "query-status"}), api)
    rec["shown"] = shown
    return rec


# --------------------------------------------------------------------------
# Old standalone qmp.py scenarios (blocking)
# --------------------------------------------------------------------------


@scenario("qmp")
def old_commands(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    with contextlib.closing(api.QEMUMonitorProtocol(lab.qemu().address)) as mon:
        rec["connect"] = outcome(mon.connect, api)
        rec["cmd"] = outcome(lambda: mon.cmd("query-status"), api)
        rec["cmd_id"] = outcome(lambda: mon.cmd("query-status", cmd_id=USER_ID + "1"), api)
        rec["cmd_args"] = outcome(lambda: mon.cmd("human-monitor-command", {"command-line": "info status"}), api)
        rec["cmd_error"] = outcome(lambda: mon.cmd("no-such-command"), api)
        rec["cmd_obj"] = outcome(lambda: mon.cmd_obj({"execute": "query-name", "id": USER_ID + "2"}), api)
        rec["command"] = outcome(lambda: mon.command("query-status"), api)
        rec["command_kwargs"] = outcome(
            lambda: mon.command("human-monitor-command", **{"command-line": "info status"}), api
        )
        try:
            mon.command("no-such-command")
        except Exception as exc:
            rec["command_error"] = {"str": str(exc), "is_Exception": True}
        rec["is_scm_available"] = mon.is_scm_available()
        rec["sock_fd"] = isinstance(mon.get_sock_fd(), int) and mon.get_sock_fd() >= 0
        mon.settimeout(TIMEOUT)
        rec["with_timeout"] = outcome(lambda: mon.cmd("query-name"), api)
        mon.settimeout(None)
    return rec


@scenario("qmp")
def old_events(api: ModuleType, lab: Lab) -> dict:
    vm = lab.qemu()
    rec: dict[str, Any] = {}
    with api.QEMUMonitorProtocol(vm.address) as mon:
        _first_events(api, mon, rec)
        mon.cmd("cont")
        mon.cmd("stop")
        events = mon.get_events()
        rec["get_events"] = normalize(events)
        rec["get_events_again"] = normalize(mon.get_events())  # not cleared
        mon.clear_events()
        rec["cleared"] = outcome(mon.get_events, api)
        mon.cmd("cont")
        rec["pull_wait_true"] = outcome(lambda: mon.pull_event(wait=True), api)
        mon.cmd("stop")
        rec["pull_wait_float"] = outcome(lambda: mon.pull_event(wait=TIMEOUT), api)
        mon.clear_events()
        # qmp 1.1.0 cannot read from its socket after a timeout: keep it last.
        rec["pull_timeout"] = outcome(lambda: mon.pull_event(wait=0.05), api)
    return rec


@scenario("qmp")
def old_server_mode(api: ModuleType, lab: Lab) -> dict:
    rec: dict[str, Any] = {}
    with warnings.catch_warnings():
        if api.__name__ == "qmp":  # qmp 1.1.0's accept() leaves its listening socket unclosed
            warnings.simplefilter("ignore", ResourceWarning)
        _server_mode(api, lab, rec, {"cmd": "query-status", "command": "query-name"})
        gc.collect()
    return rec


@scenario("qmp")
def old_fd_via_sock_fd(api: ModuleType, lab: Lab) -> dict:
    """Old callers pass fds themselves, on the socket from get_sock_fd()."""
    import array

    rec: dict[str, Any] = {}
    with contextlib.closing(api.QEMUMonitorProtocol(lab.qemu().address)) as mon:
        mon.connect()
        with open(lab.path("passed.txt"), "w") as f:
            helper = socket.socket(fileno=os.dup(mon.get_sock_fd()))
            try:
                helper.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [f.fileno()]))])
            finally:
                helper.detach()
            rec["getfd"] = outcome(lambda: mon.cmd("getfd", {"fdname": "fd1"}), api)
            rec["closefd"] = outcome(lambda: mon.command("closefd", fdname="fd1"), api)
    return rec


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


def run_scenario(name: str, backend: str, workdir: pathlib.Path) -> dict:
    """Run one scenario on one backend; the blocking APIs get an event loop
    of their own (as a plain script would), the asyncio one a fresh loop."""
    sc = SCENARIOS[name]
    api = load_api(backend, sc.api)
    workdir.mkdir(parents=True, exist_ok=True)
    with lab_for(workdir) as lab:
        if sc.is_async:
            return asyncio.run(asyncio.wait_for(sc.func(api, lab), 3 * TIMEOUT))
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return sc.func(api, lab)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
