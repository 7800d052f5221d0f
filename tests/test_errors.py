"""Errors that explain: QEMU's error classes, and connect failures that name
the address and the fix.

Connect failures are provoked with real sockets: a missing path, a stale
socket file nobody listens on, a socket this user may not open, a monitor
that a real QEMU already serves to another client, a real qemu-ga given to
``connect`` and a real QEMU given to ``connect_guest_agent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pickle
import socket
import stat
import tempfile

import pytest

import qmpcore
from fake_server import FakeServer, Peer
from qemu_support import launcher  # noqa: F401 -- fixture
from qmpcore import errors
from qmpcore.protocol.events import ErrorReply

WAIT = 30.0  # bound on waits that should end at once (a failure shows as a different error)
SHORT = 0.5  # the timeout given where the test wants the timeout to happen

QEMU_CLASSES = {
    "GenericError": errors.GenericError,
    "CommandNotFound": errors.CommandNotFound,
    "DeviceEncrypted": errors.DeviceEncrypted,
    "DeviceNotActive": errors.DeviceNotActive,
    "DeviceNotFound": errors.DeviceNotFound,
    "KVMMissingCap": errors.KVMMissingCap,
}


# -- CommandError per QEMU error class -----------------------------------------------


@pytest.mark.parametrize("name, cls", sorted(QEMU_CLASSES.items()))
def test_each_qemu_error_class_has_its_subclass(name, cls):
    reply = {"error": {"class": name, "desc": "d"}, "id": 3}
    err = qmpcore.CommandError.from_reply(name, "d", "device_del", reply)
    assert type(err) is cls and isinstance(err, qmpcore.CommandError) and isinstance(err, qmpcore.QMPError)
    assert (err.error_class, err.desc, err.command, err.reply, err.qemu_class) == (name, "d", "device_del", reply, name)
    assert str(err) == f"device_del: {name}: d"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls and (copy.error_class, copy.desc, copy.command, copy.reply) == (
        name,
        "d",
        "device_del",
        reply,
    )


def test_unknown_error_class_stays_a_plain_command_error():
    for name in ("FutureError", "", "genericerror"):
        assert type(qmpcore.CommandError.from_reply(name, "x")) is qmpcore.CommandError


def test_error_reply_builds_the_subclass():
    raw = {"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": 1}
    err = ErrorReply(1, "device_del", "DeviceNotFound", "Device 'x' not found", raw).exception()
    assert type(err) is qmpcore.DeviceNotFound and err.command == "device_del" and err.reply is raw


def test_the_public_names():
    for name in ("GenericError", "CommandNotFound", "DeviceNotActive", "DeviceNotFound", "KVMMissingCap"):
        assert getattr(qmpcore, name) is getattr(errors, name)
    assert qmpcore.ConnectError is errors.ConnectError


async def test_clients_raise_the_subclass(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.error(cmd, "DeviceNotFound", "Device 'nic9' not found")
        cmd = peer.recv_command()
        peer.error(cmd, "SomethingNew", "new")
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with qmpcore.connect(server.address, timeout=WAIT) as qmp:
            with pytest.raises(qmpcore.DeviceNotFound, match="nic9"):
                await qmp.execute("device_del", {"id": "nic9"})
            with pytest.raises(qmpcore.CommandError) as info:
                await qmp.execute("x")
            assert type(info.value) is qmpcore.CommandError


# -- ConnectError ----------------------------------------------------------------------


def test_connect_error_is_an_oserror_with_its_errno():
    err = errors.SocketNotFound("no such socket", address="/run/x.sock", hint="start QEMU")
    assert isinstance(err, qmpcore.ConnectError) and isinstance(err, qmpcore.QMPError)
    assert isinstance(err, OSError) and isinstance(err, FileNotFoundError) and err.errno == errno.ENOENT
    assert str(err) == "/run/x.sock: no such socket (start QEMU)"
    assert err.detail == "no such socket (start QEMU)" and err.message == "no such socket" and err.hint == "start QEMU"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.SocketNotFound and str(copy) == str(err) and copy.errno == errno.ENOENT
    assert isinstance(errors.ConnectTimeout("x"), qmpcore.TimeoutError)
    assert isinstance(errors.ConnectTimeout("x"), asyncio.TimeoutError)
    assert isinstance(errors.WrongProtocol("x"), qmpcore.ProtocolError)
    assert isinstance(errors.HandshakeLost("x"), qmpcore.ConnectionLost)
    assert isinstance(errors.ConnectionRefused("x"), ConnectionRefusedError)
    assert isinstance(errors.SocketPermissionError("x"), PermissionError)


def _connect_all(path, agent: bool, timeout: float = WAIT) -> list[BaseException]:
    """The errors the asyncio and blocking connect functions raise for ``path``."""
    found: list[BaseException] = []

    async def aio() -> None:
        try:
            if agent:
                await qmpcore.connect_guest_agent(path, timeout=timeout)
            else:
                await qmpcore.connect(path, timeout=timeout)
        except BaseException as exc:
            found.append(exc)

    asyncio.run(aio())
    try:
        if agent:
            qmpcore.connect_guest_agent_sync(path, timeout=timeout)
        else:
            qmpcore.connect_sync(path, timeout=timeout)
    except BaseException as exc:
        found.append(exc)
    return found


@pytest.mark.parametrize("agent", [False, True])
def test_missing_socket(tmp_path, agent):
    path = tmp_path / "nothing.sock"
    for err in _connect_all(path, agent):
        assert type(err) is errors.SocketNotFound and err.errno == errno.ENOENT, repr(err)
        assert str(path) in str(err) and err.address.sockaddr == str(path)
        if agent:
            assert f"-m unix-listen -p {path}" in str(err)
        else:
            assert f"-qmp unix:{path},server=on,wait=off" in str(err)
        assert "\n" not in str(err)


@pytest.mark.parametrize("agent", [False, True])
def test_stale_socket_is_refused(tmp_path, agent):
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening: what a killed QEMU leaves behind
        for err in _connect_all(path, agent):
            assert type(err) is errors.ConnectionRefused and err.errno == errno.ECONNREFUSED, repr(err)
            assert str(err).startswith(f"{path}: connection refused (")
            assert "nothing listens" in str(err)


def test_tcp_port_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # reserved, not listening
        port = sock.getsockname()[1]
        for err in _connect_all(("127.0.0.1", port), agent=False):
            assert type(err) is errors.ConnectionRefused, repr(err)
            assert f"-qmp tcp:127.0.0.1:{port},server=on,wait=off" in str(err)


def test_host_name_with_several_addresses_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # reserved, not listening (nor is ::1 on it)
        port = sock.getsockname()[1]
        for err in _connect_all(("localhost", port), agent=False):
            assert type(err) is errors.ConnectionRefused and err.errno == errno.ECONNREFUSED, repr(err)
            assert str(err).startswith(f"localhost:{port}: connection refused (")


def test_refused_on_every_address_of_a_host():
    """asyncio's error when it tried several addresses has no errno of its own."""
    from qmpcore.client.address import parse_address
    from qmpcore.client.diagnose import connect_error

    tried = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 4444, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 4444)"
    )
    address = parse_address(("localhost", 4444))
    err = connect_error(tried, address, agent=False, timeout=1.0, connected=False)
    assert type(err) is errors.ConnectionRefused and err.errno == errno.ECONNREFUSED
    mixed = OSError("Multiple exceptions: [Errno 111] x, [Errno 101] y")
    err = connect_error(mixed, address, agent=False, timeout=1.0, connected=False)
    assert type(err) is errors.ConnectError and err.errno is None and "Multiple exceptions" in str(err)


@contextlib.contextmanager
def _as_nobody():
    """Connect as an unprivileged user (root may open any socket)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_socket_permission():
    directory = tempfile.mkdtemp(prefix="qmpcore-perm-")
    path = os.path.join(directory, "qmp.sock")
    try:
        os.chmod(directory, 0o755)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            os.chmod(path, 0o600 if os.geteuid() == 0 else 0)
            with _as_nobody():
                found = _connect_all(path, agent=False)
        mode = "rw-------" if os.geteuid() == 0 else "---------"
        for err in found:
            assert type(err) is errors.SocketPermissionError and err.errno in (errno.EACCES, errno.EPERM), repr(err)
            text = str(err)
            assert text.startswith(f"{path}: permission denied (the socket is owned by ")
            assert f"uid {os.getuid()}" in text and f"mode {mode}" in text and "this process runs as" in text
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(directory)


def test_closed_directory_permission(tmp_path):
    directory = tmp_path / "closed"
    directory.mkdir(mode=0o700)
    path = directory / "qmp.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        if os.geteuid() != 0:
            os.chmod(directory, 0)
        try:
            with _as_nobody():
                found = _connect_all(path, agent=False)
        finally:
            os.chmod(directory, 0o700)
    assert found
    for err in found:
        assert type(err) is errors.SocketPermissionError, repr(err)
        assert "a directory on the path is closed to this user" in str(err)


def test_silent_server_says_both_causes(tmp_path):
    def script(peer: Peer) -> None:
        peer.recv()  # like a busy monitor or a guest agent: nothing until spoken to... and no answer

    with FakeServer(tmp_path, script) as server:
        found = _connect_all(server.address, agent=False, timeout=SHORT)
    assert len(found) == 2
    for err in found:
        assert type(err) is errors.ConnectTimeout and err.errno == errno.ETIMEDOUT, repr(err)
        assert isinstance(err, qmpcore.TimeoutError)
        text = str(err)
        assert "no QMP greeting within 0.5 s" in text and "another client holds this monitor" in text
        assert "connect_guest_agent()" in text


async def test_garbage_is_wrong_protocol(tmp_path):
    def script(peer: Peer) -> None:
        peer.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        peer.recv()

    async with FakeServer(tmp_path, script) as server:
        with pytest.raises(errors.WrongProtocol) as info:
            await qmpcore.connect(server.address, timeout=WAIT)
    assert "expected a QMP greeting" in str(info.value) and "connect_guest_agent()" in str(info.value)


async def test_close_before_greeting_is_handshake_lost(tmp_path):
    async with FakeServer(tmp_path, lambda peer: None) as server:
        with pytest.raises(errors.HandshakeLost) as info:
            await qmpcore.connect(server.address, timeout=WAIT)
    assert str(info.value).startswith(f"{server.address}: the server closed the connection during the handshake")


@pytest.mark.qemu
def test_busy_monitor_held_by_real_qemu(launcher):  # noqa: F811
    vm = launcher.qemu()
    with qmpcore.connect_sync(vm.path, timeout=WAIT) as holder:
        found = _connect_all(vm.path, agent=False, timeout=SHORT)
        assert holder.execute("query-status")["status"] == "running"  # the holder still works
    assert len(found) == 2
    for err in found:
        assert type(err) is errors.ConnectTimeout, repr(err)
        assert "connected, but no QMP greeting within 0.5 s" in str(err)
        assert "another client holds this monitor (QEMU serves one client at a time)" in str(err)


@pytest.mark.qemu
def test_real_qemu_ga_given_to_connect(launcher):  # noqa: F811
    agent = launcher.qga()
    for err in _connect_all(agent.path, agent=False, timeout=SHORT):
        assert type(err) is errors.ConnectTimeout, repr(err)
        assert "no QMP greeting" in str(err) and "this is a guest agent socket: use connect_guest_agent()" in str(err)
    with qmpcore.connect_guest_agent_sync(agent.path, timeout=WAIT) as ga:  # and the agent is fine
        assert ga.execute("guest-ping") == {}


@pytest.mark.qemu
def test_real_qemu_given_to_connect_guest_agent(launcher):  # noqa: F811
    vm = launcher.qemu()
    found = _connect_all(vm.path, agent=True, timeout=WAIT)
    assert len(found) == 2
    for err in found:
        # At once: the greeting is proof, so no ConnectTimeout after WAIT.
        assert type(err) is errors.WrongProtocol and err.errno == errno.EPROTO, repr(err)
        assert "a QMP greeting arrived: this is a QMP monitor" in str(err)
        assert "QMP monitors need connect()" in str(err)


# -- StateError says why the client is closed ----------------------------------------


async def test_state_error_after_quit(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        assert cmd["execute"] == "quit"
        peer.reply(cmd)
        peer.close()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address, timeout=WAIT)
        await qmp.execute("quit")
        await asyncio.wait_for(qmp.wait_closed(), WAIT)
        with pytest.raises(qmpcore.StateError, match="the connection was closed by quit"):
            await qmp.execute("query-status")
        await qmp.close()
        with pytest.raises(qmpcore.StateError, match="closed by quit"):
            await qmp.execute("query-status")


def test_state_error_right_after_quit_blocking(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.reply(cmd)
        peer.recv()  # QEMU would exit now; the client must not wait for that to say so

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address, timeout=WAIT) as qmp:
            qmp.execute("quit")
            with pytest.raises(qmpcore.StateError, match=f"^{server.address}: the connection was closed by quit$"):
                qmp.execute("query-status")


def test_state_error_after_close(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        qmp = qmpcore.connect_sync(server.address, timeout=WAIT)
        qmp.close()
        with pytest.raises(qmpcore.StateError, match=r"the client is closed \(close\(\) was called\)"):
            qmp.execute("query-status")


def test_permission_hint_names_owner_and_mode(tmp_path):
    from qmpcore.client.diagnose import permission_hint

    path = tmp_path / "x.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        os.chmod(path, 0o660)
        hint = permission_hint(str(path))
    assert f"uid {os.stat(tmp_path).st_uid}" in hint and "mode rw-rw----" in hint
    assert stat.S_IMODE(0o660) == 0o660


# -- addresses typed as text -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("host:abc", "port 'abc' is not a number in 'host:abc'"),
        ("host:", "no port after the host in 'host:'"),
        (":4444", "no host before the port in ':4444'"),
        ("host:70000", "port 70000 is out of range (1-65535) in 'host:70000'"),
        ("host:" + "9" * 5000, "is out of range (1-65535)"),
        ("[::1]:0", "port 0 is out of range"),
        ("::1:4444", "an IPv6 address needs brackets: [::1]:4444"),
        ("[::1]", "expected [IPv6]:port, got '[::1]'"),
        ("", "empty address"),
    ],
)
def test_text_address_errors_name_the_bad_part(text, message):
    from qmpcore.client.address import AddressError, parse_address

    with pytest.raises(AddressError) as info:
        parse_address(text, text=True)
    assert message in str(info.value) and isinstance(info.value, ValueError)
    assert info.value.text == text
    if text == "host:abc":  # the parts, for callers with their own wording
        assert (info.value.part, info.value.value) == ("port", "abc")


def test_text_addresses(tmp_path, monkeypatch):
    from qmpcore.client.address import parse_address

    assert parse_address("localhost:4444", text=True).sockaddr == ("localhost", 4444)
    v6 = parse_address("[::1]:4444", text=True)
    assert v6.family == socket.AF_INET6 and v6.sockaddr == ("::1", 4444) and str(v6) == "[::1]:4444"
    assert parse_address("/run/vm:1/qmp.sock", text=True).is_unix
    assert parse_address("qmp.sock", text=True).is_unix
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vm:1").touch()  # an existing file wins over host:port
    assert parse_address("vm:1", text=True).sockaddr == "vm:1"
    # From Python a str stays a path, as before.
    assert parse_address("host:abc").sockaddr == "host:abc"
    for address in ("localhost:4444", "[::1]:4444", "/run/x.sock"):  # str() reads back the same
        assert str(parse_address(address, text=True)) == address


async def test_fleet_last_errors_explain_too(tmp_path):
    from qmpcore.fleet import Fleet

    missing = str(tmp_path / "vm1.sock")
    async with Fleet({"vm1": missing}, reconnect=False, connect_timeout=WAIT) as fleet:
        err = fleet.stats().last_errors["vm1"]
    assert type(err) is errors.SocketNotFound and f"-qmp unix:{missing},server=on,wait=off" in str(err)
