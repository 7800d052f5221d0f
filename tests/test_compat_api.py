"""The adapters have the reference libraries' names, signatures and the
behaviour of their server-independent pieces (messages, listeners, models,
errors, address parsing).  No QEMU needed."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import types
from collections.abc import Callable
from typing import Any

import pytest

from compat_scenarios import load_api, normalize, outcome

#: api -> classes whose public interface must match
CLASSES = {
    "qemu_qmp": ["QMPClient", "Message", "EventListener", "Greeting"],
    "legacy": ["QEMUMonitorProtocol"],
    "qmp": ["QEMUMonitorProtocol"],
}

#: Names the legacy and qmp.py modules export besides their classes.
MODULE_NAMES = {
    "legacy": ["QEMUMonitorProtocol", "QMPBadPortError", "QMPMessage", "QMPReturnValue", "QMPObject", "QMPError"],
    "qmp": ["QEMUMonitorProtocol", "QMPError", "QMPConnectError", "QMPCapabilitiesError", "QMPTimeoutError"],
}


def namespace(backend: str, api: str) -> Any:
    """The API module; qemu.qmp's submodules are merged in, since callers
    import from them too (``qemu.qmp.models.Greeting``)."""
    mod = load_api(backend, api)
    if backend != "reference" or api != "qemu_qmp":
        return mod
    ns = types.SimpleNamespace(**vars(mod))
    for sub in ("models", "message", "qmp_client", "events", "error", "protocol"):
        for key, value in vars(importlib.import_module(f"qemu.qmp.{sub}")).items():
            if not key.startswith("_") and not hasattr(ns, key):
                setattr(ns, key, value)
    return ns


def public_names(api: str) -> list[str]:
    ref = load_api("reference", api)
    return list(getattr(ref, "__all__", None) or MODULE_NAMES[api])


def members(cls: type) -> dict[str, Any]:
    return {
        name: inspect.getattr_static(cls, name)
        for name in dir(cls)
        if not name.startswith("_")
        or name in ("__init__", "__enter__", "__exit__", "__aiter__", "__anext__", "_asdict")
    }


def shape(obj: Any) -> Any:
    """What a caller relies on: kind, async-ness, parameters and defaults."""
    if isinstance(obj, property):
        return "property"
    if isinstance(obj, (classmethod, staticmethod)):
        return [type(obj).__name__, shape(obj.__func__)]
    if callable(obj):
        params = [
            (p.name, p.kind.name, repr(p.default) if p.default is not p.empty else None)
            for p in inspect.signature(obj).parameters.values()
        ]
        # keyword-only additions with defaults do not break callers
        params = [p for p in params if not (p[1] == "KEYWORD_ONLY" and p[2] is not None)]
        return ["async" if inspect.iscoroutinefunction(obj) else "def", params]
    return "attribute"


@pytest.mark.parametrize("api", list(CLASSES))
def test_module_names(api: str) -> None:
    ours = load_api("qmpcore", api)
    missing = [name for name in public_names(api) if not hasattr(ours, name)]
    assert not missing


@pytest.mark.parametrize("api, cls", [(a, c) for a, cs in CLASSES.items() for c in cs])
def test_class_interface(api: str, cls: str) -> None:
    ref = members(getattr(namespace("reference", api), cls))
    ours = members(getattr(namespace("qmpcore", api), cls))
    different = {
        name: (shape(obj), shape(ours.get(name)))
        for name, obj in ref.items()
        if name not in ours or shape(obj) != shape(ours[name])
    }
    assert not different


@pytest.mark.parametrize("api", list(CLASSES))
def test_exception_hierarchy(api: str) -> None:
    """Each exception class has the same named ancestors among the API's own."""

    def tree(mod: Any) -> dict[str, list[str]]:
        names = {
            n for n in dir(mod) if isinstance(getattr(mod, n), type) and issubclass(getattr(mod, n), BaseException)
        }
        return {
            n: sorted({b.__name__ for b in getattr(mod, n).__mro__ if b.__name__ in names})
            for n in names
            if n in public_names(api) or api == "qemu_qmp"
        }

    ref, ours = tree(load_api("reference", api)), tree(load_api("qmpcore", api))
    assert {n: ours.get(n) for n in ref} == ref


def test_runstate_members() -> None:
    ref, ours = (load_api(b, "qemu_qmp").Runstate for b in ("reference", "qmpcore"))
    assert [(m.name, m.value) for m in ours] == [(m.name, m.value) for m in ref]


# -- behaviour without a server, recorded on both backends and compared ------


def message_record(api: Any) -> dict:
    Message = api.Message
    rec: dict[str, Any] = {}
    m = Message({"hello": "world", "n": [1, 2.5, None, True]})
    rec["bytes"] = bytes(m)
    rec["str"] = str(m)
    rec["repr"] = repr(m)
    m["id"] = "x"
    rec["after_set"] = [bytes(m), len(m), list(m), "id" in m, m.get("nope")]
    del m["id"]
    rec["after_del"] = bytes(m)
    rec["from_bytes"] = [dict(Message(b'{"a": {"b": 1}}')), repr(Message(b'{"a": 1}', eager=False))]
    rec["lazy_bad"] = outcome(lambda: Message(b"{", eager=False), api)
    rec["lazy_bad_use"] = outcome(lambda: dict(Message(b"{", eager=False)), api)
    rec["bad_json"] = outcome(lambda: Message(b"{"), api)
    rec["not_object"] = outcome(lambda: Message(b"[1, 2]"), api)
    rec["not_serializable"] = outcome(lambda: Message({"a": object()}), api)
    rec["eq"] = [Message({"a": 1}) == {"a": 1}, Message({"a": 1}) == Message(b'{"a":1}')]
    rec["default"] = [dict(Message()), bytes(Message())]
    rec["non_ascii"] = bytes(Message({"s": "é\u2603"}))
    try:
        Message(b"{")
    except Exception as exc:
        rec["bad_json_detail"] = [type(exc.__cause__).__name__ if exc.__cause__ else None, getattr(exc, "raw", None)]
    return rec


def listener_record(api: Any) -> dict:
    rec: dict[str, Any] = {}
    Message, EventListener = api.Message, api.EventListener
    stop, resume = Message({"event": "STOP"}), Message({"event": "RESUME", "data": {"x": 1}})

    async def run() -> None:
        all_ = EventListener()
        named = EventListener(["STOP", "RESUME"], event_filter=lambda e: "data" in e)
        single = EventListener("STOP")
        rec["accept"] = [[lis.accept(e) for e in (stop, resume)] for lis in (all_, named, single)]
        for lis in (all_, named, single):
            for e in (stop, resume, stop):
                await lis.put(e)
        rec["reprs"] = [repr(all_), repr(single)]
        rec["names"] = [sorted(all_.names), sorted(named.names), sorted(single.names)]
        rec["empty"] = [lis.empty() for lis in (all_, named, single)]
        rec["get"] = [normalize(await all_.get()), normalize(await named.get())]
        rec["clear"] = normalize(all_.clear())
        rec["history"] = [normalize(all_.history), type(all_.history).__name__]
        rec["after"] = [all_.empty(), named.empty(), repr(all_)]
        waiter = asyncio.ensure_future(single.get())
        await asyncio.sleep(0)
        single.clear()
        getter = asyncio.ensure_future(single.get())
        await asyncio.sleep(0)
        await single.put(stop)
        rec["waiters"] = [normalize(await asyncio.wait_for(waiter, 5)), getter.done()]
        getter.cancel()
        got = []
        await single.put(stop)
        async for event in single:
            got.append(normalize(event))
            break
        rec["aiter"] = got

    asyncio.run(run())
    return rec


def models_record(api: Any) -> dict:
    Greeting = api.Greeting
    rec: dict[str, Any] = {}
    for name, raw in {
        "missing_qmp": {},
        "qmp_not_object": {"QMP": []},
        "missing_version": {"QMP": {"capabilities": []}},
        "caps_not_list": {"QMP": {"version": {}, "capabilities": 5}},
        "good": {"QMP": {"version": {"qemu": {}}, "capabilities": ["oob"]}},
    }.items():
        rec[name] = outcome(lambda raw=raw: repr(Greeting(raw)), api)
    g = Greeting({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}})
    rec["fields"] = [dict(g.QMP.version), list(g.QMP.capabilities), g._asdict(), repr(g.QMP)]
    ErrorResponse = api.ErrorResponse
    rec["error_response"] = outcome(
        lambda: [
            ErrorResponse({"error": {"class": "C", "desc": "d"}, "id": 1}).id,
            ErrorResponse({"error": {"class": "C", "desc": "d"}}).error.class_,
        ],
        api,
    )
    rec["error_bad"] = [
        outcome(lambda raw=raw: ErrorResponse(raw), api)
        for raw in ({}, {"error": {"class": 1, "desc": "d"}}, {"error": {"class": "C"}})
    ]
    return rec


def errors_record(api: Any) -> dict:
    rec: dict[str, Any] = {}
    rec["connect"] = [
        str(api.ConnectError("Failed", EOFError())),
        str(api.ConnectError("Failed", OSError(2, "No such file"))),
    ]
    state = api.StateError("msg", api.Runstate.IDLE, api.Runstate.RUNNING)
    rec["state"] = [str(state), state.state.name, state.required.name]
    msg = api.Message({"a": 1})
    for cls_name, arg in (
        ("DeserializationError", b"{x"),
        ("UnexpectedTypeError", [1]),
        ("ServerParseError", msg),
        ("GreetingError", ValueError("why")),
        ("NegotiationError", ValueError("why")),
        ("ProtocolError", "x"),
    ):
        rec[cls_name] = str(getattr(api, cls_name)("text", arg))
    rec["BadReplyError"] = str(api.BadReplyError("text", msg, msg))
    return rec


def address_record(api: Any) -> dict:
    parse = api.QEMUMonitorProtocol.parse_address
    return {
        a: outcome(lambda a=a: parse(a), api)
        for a in ("/tmp/q.sock", "localhost:4444", "host:port", "a:b:c", ":1", "x:")
    }


RECORDS: dict[str, tuple] = {
    "message": ("qemu_qmp", message_record),
    "listener": ("qemu_qmp", listener_record),
    "models": ("qemu_qmp", models_record),
    "errors": ("qemu_qmp", errors_record),
    "legacy_address": ("legacy", address_record),
}


@pytest.mark.parametrize("name", list(RECORDS))
def test_same_behaviour(name: str) -> None:
    run: Callable[[Any], dict] = RECORDS[name][1]
    api = RECORDS[name][0]
    ref = run(namespace("reference", api))
    ours = run(namespace("qmpcore", api))
    differing = sorted(k for k in ref.keys() | ours.keys() if ref.get(k) != ours.get(k))
    assert not differing, {k: {"reference": ref.get(k), "qmpcore": ours.get(k)} for k in differing}


def test_adapters_and_fleet_use_only_public_client_api() -> None:
    """Nothing above the clients reaches into their internals (socket,
    transport, lock, event router, handshake steps)."""
    import ast
    import pathlib

    import qmpcore

    client_internals = {
        "_sock",
        "_transport",
        "_cond",
        "_read_once",
        "_reading",
        "_router",
        "_open",
        "_greeted",
        "_handshake",
        "_Transport",
        "_proto",
        "_waiters",
    }
    package = pathlib.Path(qmpcore.__file__).parent
    for path in sorted(package.glob("compat/*.py")) + [package / "fleet.py"]:
        tree = ast.parse(path.read_text(), str(path))
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        }  # its own
        assert not used & client_internals, f"{path.name} uses {sorted(used & client_internals)}"


# -- qemu.qmp's submodules, as QEMU's tools import them -----------------------


def test_each_mapped_submodule_has_the_originals_names() -> None:
    """Every name a qemu.qmp submodule defines is in the module the importer
    puts in its place (qmp_tui imports from .util, .protocol, ...)."""
    from qmpcore.compat.importer import MODULES

    for reference, adapter in MODULES.items():
        ref = importlib.import_module(reference)
        ours = importlib.import_module(adapter)
        names = [
            n for n, v in vars(ref).items() if not n.startswith("_") and getattr(v, "__module__", None) == reference
        ]
        assert names, reference
        assert [n for n in names if not hasattr(ours, n)] == [], reference


def test_class_relations_match() -> None:
    from qemu.qmp import models, protocol, qmp_client

    from qmpcore.compat import _models, _protocol

    assert issubclass(qmp_client.QMPClient, protocol.AsyncProtocol)
    assert issubclass(qemu_qmp_api().QMPClient, _protocol.AsyncProtocol)
    assert issubclass(models.Greeting, models.Model) and issubclass(_models.Greeting, _models.Model)
    assert qemu_qmp_api().QMPClient._cb_outbound is not None


def qemu_qmp_api() -> Any:
    return load_api("qmpcore", "qemu_qmp")


def test_util_helpers_behave_as_qemu_qmps() -> None:
    from qemu.qmp import util as ref

    from qmpcore.compat import _util as ours

    for exc in (ValueError("bad"), EOFError(), qemu_qmp_api().QMPError("x"), KeyError("k")):
        expected = ref.exception_summary(exc).replace("qmpcore.compat._errors", "M")
        assert ours.exception_summary(exc).replace("qmpcore.compat._errors", "M") == expected
    try:
        raise OSError(2, "gone")
    except OSError:
        assert ours.pretty_traceback("> ").splitlines()[-1] == ref.pretty_traceback("> ").splitlines()[-1]
        assert ours.pretty_traceback().splitlines()[0] == "  | Traceback (most recent call last):"

    def f() -> None: ...

    assert ours.upper_half(f) is f and ours.bottom_half(f) is f
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        assert ours.get_or_create_event_loop() is loop is ref.get_or_create_event_loop()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def test_util_flush_drains_a_writer() -> None:
    from qmpcore.compat._util import flush

    received = bytearray()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 16):
            received.extend(chunk)
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        limits = writer.transport.get_write_buffer_limits()
        writer.write(b"x" * (1 << 20))
        await asyncio.wait_for(flush(writer), 10)
        assert writer.transport.get_write_buffer_size() == 0
        assert writer.transport.get_write_buffer_limits() == limits
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done.wait(), 10)
        assert len(received) == 1 << 20
    finally:
        server.close()
        await server.wait_closed()


def test_require_checks_the_runstate() -> None:
    from qmpcore.compat._protocol import Runstate, StateError, require

    class Thing:
        runstate = Runstate.IDLE

        @require(Runstate.RUNNING)
        def run(self) -> str:
            return "ran"

    with pytest.raises(StateError, match="Thing is disconnected and idle.") as info:
        Thing().run()
    assert (info.value.state, info.value.required) == (Runstate.IDLE, Runstate.RUNNING)
    thing = Thing()
    thing.runstate = Runstate.RUNNING
    assert thing.run() == "ran"


def test_importer_maps_qemu_qmp_to_the_adapters(tmp_path) -> None:
    """In a fresh interpreter: the mapping, QEMU's tools found beside it,
    and refusal once the real qemu.qmp is loaded."""
    import subprocess
    import sys

    from qmpcore.server._process import child_environment

    code = """
from qmpcore.compat import importer
importer.install()
import qemu.qmp, qemu.qmp.util, qemu.qmp.protocol
from qemu.qmp.qmp_shell import QMPShell
from qmpcore.compat import legacy, qemu_qmp, _protocol
assert qemu.qmp.QMPClient is qemu_qmp.QMPClient
assert issubclass(QMPShell, legacy.QEMUMonitorProtocol)
assert qemu.qmp.protocol.AsyncProtocol is _protocol.AsyncProtocol
import qemu.qmp as package
assert package.__all__ == ("QMPClient", "Message", "EventListener", "Runstate", "QMPError", "StateError",
                           "ConnectError", "ExecuteError", "ExecInterruptedError", "SocketAddrT")
assert package.legacy is legacy and package.qmp_client is qemu_qmp
importer.uninstall()
import qemu.qmp
assert qemu.qmp.QMPClient is not qemu_qmp.QMPClient
try:
    importer.install()
except RuntimeError as exc:
    assert "before anything imports it" in str(exc)
else:
    raise AssertionError("installed over the real qemu.qmp")
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_environment(), timeout=60
    )
    assert proc.stdout.strip() == "ok", proc.stderr


async def test_ssl_context_is_passed_to_qmpcores_connect(monkeypatch) -> None:
    """Until qmpcore's connect takes ``ssl=``, a context is refused with a
    clear error; once it does, the context reaches it untouched."""
    import ssl

    from qmpcore.client import aio

    api = qemu_qmp_api()
    context = ssl.create_default_context()
    seen: list[Any] = []

    async def connect_with_tls(address: Any = None, *, ssl: Any = None, **kwargs: Any) -> Any:
        seen.append(ssl)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(aio, "connect", connect_with_tls)
    client = api.QMPClient()
    with pytest.raises(api.ConnectError) as info:
        await client.connect(("127.0.0.1", 1), ssl=context)
    assert seen == [context]
    assert isinstance(info.value.exc, ConnectionRefusedError)

    async def connect_without_tls(address: Any = None, **kwargs: Any) -> Any:
        raise AssertionError("not reached")

    monkeypatch.setattr(aio, "connect", connect_without_tls)
    with pytest.raises(NotImplementedError, match="ssl="):
        await client.connect(("127.0.0.1", 1), ssl=context)
    assert client.runstate is api.Runstate.IDLE
