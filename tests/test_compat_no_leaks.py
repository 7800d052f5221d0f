"""No qmpcore exception leaks through an adapter.

Hostile or failing peers (scripted in :mod:`fake_server`) provoke every
failure path of the three adapters; what the caller catches, its ``.exc``
and the chain a traceback shows hold only the adapted libraries' classes
and builtins.  ``qmpcore.compat``'s own classes are fine: they are the
adapted library's classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from compat_scenarios import qmpcore_errors_in
from fake_server import FakeServer, Peer
from qmpcore.compat import legacy, qemu_qmp
from qmpcore.compat import qmp as old_qmp

TIMEOUT = 10.0


def caught(fn: Callable[[], Any]) -> BaseException:
    """The exception ``fn()`` raises (the test fails if none)."""
    try:
        fn()
    except BaseException as exc:
        return exc
    pytest.fail(f"{fn} raised nothing")


async def acaught(aw: Any) -> BaseException:
    try:
        await asyncio.wait_for(aw, TIMEOUT)
    except BaseException as exc:
        return exc
    pytest.fail(f"{aw} raised nothing")


def clean(exc: BaseException, expected: type[BaseException] | tuple[type[BaseException], ...]) -> None:
    assert isinstance(exc, expected), repr(exc)
    assert qmpcore_errors_in(exc) == [], (exc, qmpcore_errors_in(exc))


# -- peers ------------------------------------------------------------------


def garbage_greeting(peer: Peer) -> None:
    peer.send(b"this is not QMP\n")
    peer.recv()


def hang_up_at_once(peer: Peer) -> None:
    peer.close()


def refuse_negotiation(peer: Peer) -> None:
    peer.greet()
    cmd = peer.recv_command()
    peer.error(cmd, "GenericError", "no")
    peer.recv()


def hang_up_on_first_command(peer: Peer) -> None:
    peer.handshake()
    peer.recv_command()
    peer.close()


def never_answer(peer: Peer) -> None:
    peer.handshake()
    with contextlib.suppress(OSError):
        while peer.recv() is not None:
            pass


PEERS = {
    "garbage_greeting": garbage_greeting,
    "hang_up_at_once": hang_up_at_once,
    "refuse_negotiation": refuse_negotiation,
}


# -- qemu.qmp (asyncio) ------------------------------------------------------


@pytest.mark.parametrize("peer", list(PEERS))
async def test_qmp_client_connect_failures(peer: str, tmp_path) -> None:
    async with FakeServer(tmp_path, PEERS[peer]) as server:
        client = qemu_qmp.QMPClient("leak")
        exc = await acaught(client.connect(server.address))
        clean(exc, qemu_qmp.ConnectError)
        assert exc.__cause__ is exc.exc
        assert client.runstate is qemu_qmp.Runstate.IDLE


async def test_qmp_client_missing_socket_and_tls(tmp_path) -> None:
    client = qemu_qmp.QMPClient()
    exc = await acaught(client.connect(str(tmp_path / "missing.sock")))
    clean(exc, qemu_qmp.ConnectError)
    assert isinstance(exc.exc, FileNotFoundError)
    context = ssl.create_default_context()
    exc = await acaught(client.connect(str(tmp_path / "missing.sock"), ssl=context))
    # passed to qmpcore's connect, which takes TLS only for TCP addresses
    clean(exc, qemu_qmp.ConnectError)
    assert isinstance(exc.exc, ValueError) and "only for TCP" in str(exc.exc)


async def test_qmp_client_peer_hangs_up(tmp_path) -> None:
    async with FakeServer(tmp_path, hang_up_on_first_command) as server:
        client = qemu_qmp.QMPClient()
        await asyncio.wait_for(client.connect(server.address), TIMEOUT)
        clean(await acaught(client.execute("query-status")), qemu_qmp.ExecInterruptedError)
        while client.runstate is qemu_qmp.Runstate.RUNNING:
            await asyncio.wait_for(client.runstate_changed(), TIMEOUT)
        clean(await acaught(client.execute("query-status")), qemu_qmp.StateError)
        clean(caught(lambda: client.send_fd_scm(0)), qemu_qmp.StateError)
        clean(await acaught(client._raw({"execute": "query-status"})), qemu_qmp.StateError)
        clean(await acaught(client.disconnect()), EOFError)


async def test_qmp_client_abandoned_command_is_logged(tmp_path, caplog) -> None:
    """A command given up on (cancelled): its late reply is logged as an
    unknown id, as qemu.qmp logs it, and nothing leaks."""

    def late(peer: Peer) -> None:
        peer.handshake()
        first = peer.recv_command()
        second = peer.recv_command()
        peer.reply(first)
        peer.reply(second, "second")
        peer.serve()

    async with FakeServer(tmp_path, late) as server:
        client = qemu_qmp.QMPClient("late")
        await asyncio.wait_for(client.connect(server.address), TIMEOUT)
        slow = asyncio.ensure_future(client.execute("query-status"))
        await asyncio.sleep(0.05)
        slow.cancel()
        clean(await acaught(slow), asyncio.CancelledError)
        with caplog.at_level(logging.WARNING, logger="qmpcore.compat"):
            assert await asyncio.wait_for(client.execute("query-name"), TIMEOUT) == "second"
        assert [r.getMessage() for r in caplog.records] == ["Unknown ID '__qmp#00000', message dropped."]
        assert caplog.records[0].levelno == logging.WARNING
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


async def test_qmp_client_raw_refuses_what_it_cannot_send(tmp_path) -> None:
    async with FakeServer(tmp_path, lambda peer: (peer.handshake(), peer.serve())) as server:
        client = qemu_qmp.QMPClient()
        await asyncio.wait_for(client.connect(server.address), TIMEOUT)
        clean(await acaught(client._raw({"hello": 1})), ValueError)
        clean(await acaught(client._raw(b"[1]")), qemu_qmp.UnexpectedTypeError)
        clean(await acaught(client._raw(b"{")), qemu_qmp.DeserializationError)
        reply = await asyncio.wait_for(client._raw({"execute": "x", "id": "mine"}, assign_id=False), TIMEOUT)
        assert reply == {"return": {}, "id": "mine"}
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


# -- qemu.qmp.legacy ---------------------------------------------------------


@pytest.mark.parametrize("peer", list(PEERS))
def test_legacy_connect_failures(peer: str, tmp_path) -> None:
    with FakeServer(tmp_path, PEERS[peer]) as server:
        mon = legacy.QEMUMonitorProtocol(server.address)
        exc = caught(mon.connect)
        clean(exc, legacy.QMPError)
        assert exc.__cause__ is exc.exc  # type: ignore[attr-defined]
        mon.close()


def test_legacy_timeouts_and_hang_up(tmp_path) -> None:
    with FakeServer(tmp_path, hang_up_on_first_command) as server:
        mon = legacy.QEMUMonitorProtocol(server.address)
        mon.connect()
        clean(caught(lambda: mon.cmd("query-status")), legacy.QMPError)
        clean(caught(lambda: mon.cmd_obj({"execute": "query-status"})), legacy.QMPError)
        clean(caught(lambda: mon.pull_event(wait=0.05)), asyncio.TimeoutError)
        clean(caught(lambda: mon.pull_event(wait=True)), legacy.QMPError)
        clean(caught(lambda: mon.send_fd_scm(0)), legacy.QMPError)
        clean(caught(mon.close), EOFError)

    with FakeServer(tmp_path, never_answer) as server:
        mon = legacy.QEMUMonitorProtocol(server.address)
        mon.connect()
        mon.settimeout(0.05)
        exc = caught(lambda: mon.cmd("query-status"))
        clean(exc, asyncio.TimeoutError)
        assert str(exc) == ""
        clean(caught(lambda: mon.cmd_obj({"execute": "query-status"})), asyncio.TimeoutError)
        mon.close()


def test_legacy_accept_timeout(tmp_path, caplog) -> None:
    mon = legacy.QEMUMonitorProtocol(str(tmp_path / "listen.sock"), server=True)
    with caplog.at_level(logging.ERROR, logger="qmpcore.compat"):
        exc = caught(lambda: mon.accept(timeout=0.05))
    clean(exc, asyncio.TimeoutError)
    assert str(exc) == ""
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    mon.close()


def test_legacy_listen_on_a_busy_address(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        exc = caught(lambda: legacy.QEMUMonitorProtocol(busy.getsockname(), server=True))
    clean(exc, legacy.QMPError)
    assert "address already in use" in str(exc)


# -- qmp.py ------------------------------------------------------------------


@pytest.mark.parametrize("peer", list(PEERS))
def test_old_qmp_connect_failures(peer: str, tmp_path) -> None:
    with FakeServer(tmp_path, PEERS[peer]) as server:
        mon = old_qmp.QEMUMonitorProtocol(server.address)
        clean(caught(mon.connect), (old_qmp.QMPError, OSError))
        mon.close()


def test_old_qmp_timeouts_and_hang_up(tmp_path) -> None:
    with FakeServer(tmp_path, never_answer) as server:
        mon = old_qmp.QEMUMonitorProtocol(server.address)
        mon.connect()
        mon.settimeout(0.05)
        clean(caught(lambda: mon.cmd("query-status")), TimeoutError)
        clean(caught(lambda: mon.pull_event(wait=0.05)), old_qmp.QMPTimeoutError)
        mon.close()
    with FakeServer(tmp_path, hang_up_on_first_command) as server:
        mon = old_qmp.QEMUMonitorProtocol(server.address)
        mon.connect()
        assert mon.cmd("query-status") is None  # qmp.py's "disconnected"
        clean(caught(lambda: mon.pull_event(wait=True)), old_qmp.QMPError)
        mon.close()
    mon = old_qmp.QEMUMonitorProtocol(os.path.join(tmp_path, "missing.sock"))
    clean(caught(mon.connect), OSError)
