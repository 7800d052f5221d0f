"""A scripted QMP/QGA peer for client tests: one connection, run in a thread.

Each test writes the server side as a plain function taking a :class:`Peer`
(blocking socket helpers), so the same scripts drive the asyncio and the
blocking clients.  Every socket operation has a timeout, so a broken client
fails a test instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import qmpcore

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"},
        "capabilities": ["oob"],
    }
}
IO_TIMEOUT = 10.0


def event_frame(name: str, data: dict | None = None, seconds: int = 1795584128, micro: int = 785071) -> bytes:
    msg: dict = {"timestamp": {"seconds": seconds, "microseconds": micro}, "event": name}
    if data is not None:
        msg["data"] = data
    return qmpcore.encode(msg)


def handshake_then_serve(peer: Peer) -> None:
    """The script of a well-behaved server: the handshake, then :meth:`Peer.serve`."""
    peer.handshake()
    peer.serve()


def numbered_events(count: int) -> bytes:
    """``count`` events ``E`` whose data are ``{"n": 0}`` up to ``{"n": count - 1}``."""
    return b"".join(event_frame("E", {"n": i}) for i in range(count))


def events_before_replies(*chunks: bytes) -> Callable[[Peer], None]:
    """A script that sends ``chunks[i]`` just before its reply to the i-th command, then serves."""

    def script(peer: Peer) -> None:
        peer.handshake()
        for chunk in chunks:
            cmd = peer.recv_command()
            peer.send(chunk)
            peer.reply(cmd)
        peer.serve()

    return script


class Peer:
    """The server end of one connection."""

    def __init__(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        self.conn = conn
        self.framer = qmpcore.Framer()
        self._items: list[Any] = []
        self.fds: list[int] = []  # descriptors received with SCM_RIGHTS

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def send_msg(self, msg: Any) -> None:
        self.send(qmpcore.encode(msg))

    def recv(self) -> Any:
        """The next item (message, SYNC, ...) from the client; None at EOF."""
        while not self._items:
            data, ancdata, _, _ = self.conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    self.fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
            if not data:
                return None
            self._items.extend(self.framer.feed(data))
        return self._items.pop(0)

    def recv_command(self) -> dict:
        item = self.recv()
        while item is qmpcore.SYNC:
            item = self.recv()
        assert isinstance(item, dict), f"expected a command, got {item!r}"
        return item

    def pending(self) -> int:
        """Commands received but not yet taken, after one more short read."""
        self.conn.settimeout(0.2)
        try:
            data = self.conn.recv(65536)
            if data:
                self._items.extend(self.framer.feed(data))
        except socket.timeout:
            pass
        finally:
            self.conn.settimeout(IO_TIMEOUT)
        return len(self._items)

    def reply(self, cmd: dict, value: Any = None) -> None:
        self.send_msg({"return": {} if value is None else value, "id": cmd["id"]})

    def error(self, cmd: dict, cls: str, desc: str) -> None:
        self.send_msg({"id": cmd["id"], "error": {"class": cls, "desc": desc}})

    def greet(self, capabilities: tuple = ("oob",)) -> None:
        greeting = {"QMP": dict(GREETING["QMP"], capabilities=list(capabilities))}
        self.send_msg(greeting)

    def handshake(self, capabilities: tuple = ("oob",)) -> dict:
        """Greet and answer qmp_capabilities; return that command."""
        self.greet(capabilities)
        cmd = self.recv_command()
        assert cmd["execute"] == "qmp_capabilities", cmd
        self.reply(cmd)
        return cmd

    def serve(self, answer: Callable[[Peer, dict], bool] | None = None) -> None:
        """Answer every command with ``{}`` (or let ``answer`` do it) until EOF."""
        while True:
            try:
                cmd = self.recv()
            except OSError:
                return
            if cmd is None:
                return
            if not isinstance(cmd, dict):
                continue
            if answer is not None and answer(self, cmd):
                continue
            if cmd.get("execute") == "quit":
                self.send(event_frame("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
                self.reply(cmd)
                return
            self.reply(cmd, {"echo": cmd.get("arguments")} if cmd.get("arguments") else {})

    def reset(self) -> None:
        """Close with a TCP-style reset (unread data makes unix sockets do it too)."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()

    def close(self) -> None:
        self.conn.close()


class FakeServer:
    """Accepts one client and runs ``script(peer)`` in a thread.

    Use as a context manager (``async with`` under asyncio, so the loop
    keeps running): leaving it joins the thread (with a timeout) and
    re-raises any assertion the script made.
    """

    def __init__(self, directory: Any, script: Callable[[Peer], None], tcp: bool = False) -> None:
        if tcp:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            self.address: Any = self.listener.getsockname()
        else:
            path = os.path.join(str(directory), "fake.sock")
            if os.path.exists(path):
                os.unlink(path)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
            self.address = path
        self.listener.listen(4)
        self.listener.settimeout(IO_TIMEOUT)
        self.script = script
        self.error: BaseException | None = None
        self.peer: Peer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        self.peer = Peer(conn)
        try:
            self.script(self.peer)
        except BaseException as exc:  # reported by __exit__
            self.error = exc
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    async def __aenter__(self) -> FakeServer:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        """Join without blocking the event loop (the client may still need it)."""
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, IO_TIMEOUT * 2)
        self.__exit__(*exc_info)

    def __exit__(self, *exc_info: Any) -> None:
        self.thread.join(IO_TIMEOUT * 2)
        self.listener.close()
        assert not self.thread.is_alive(), "fake server script did not finish"
        if self.error is not None and exc_info[0] is None:
            raise self.error
