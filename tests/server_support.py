"""A raw socket peer for server tests (no qmpcore client involved).

:class:`Peer` talks to the embedded server (or a real QEMU) over a plain
non-blocking socket on the running event loop, so tests see exactly the
bytes on the wire.  Every wait has a timeout.
"""

from __future__ import annotations

import array
import asyncio
import re
import socket
from typing import Any

import orjson

TIMEOUT = 10.0
QUIET = 0.2  # how long "nothing arrives" is watched

# Event timestamps differ from run to run (compact and pretty layouts).
_STAMP = re.compile(rb'("seconds": )\d+(,\s*"microseconds": )\d+')


def normalize(data: bytes) -> bytes:
    """``data`` with every event timestamp replaced by zeros."""
    return _STAMP.sub(rb"\g<1>0\g<2>0", data)


class Peer:
    """One client connection, bytes in and out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = b""
        self.eof = False
        self.reset = False

    @classmethod
    async def connect(cls, address: str | tuple[str, int], timeout: float = TIMEOUT) -> Peer:
        family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
                return cls(sock)
            except (ConnectionRefusedError, FileNotFoundError):
                # A QEMU that just created its socket may not listen yet.
                sock.close()
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)
            except BaseException:
                sock.close()
                raise

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), TIMEOUT)

    def send_fds(self, data: bytes, fds: list[int]) -> None:
        """One message with ``fds`` attached (SCM_RIGHTS)."""
        self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])

    async def _fill(self, timeout: float) -> bool:
        """Read once; False when the connection ended."""
        if self.eof:
            return False
        try:
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 20), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def read_exactly(self, size: int, timeout: float = TIMEOUT) -> bytes:
        deadline = self.loop.time() + timeout
        while len(self.buffer) < size:
            left = deadline - self.loop.time()
            if left <= 0 or not await self._fill(left):
                raise AssertionError(f"wanted {size} bytes, got {self.buffer[:300]!r} (eof={self.eof})")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def read_line(self, end: bytes = b"\r\n", timeout: float = TIMEOUT) -> bytes:
        """Bytes up to and including the next ``end``."""
        deadline = self.loop.time() + timeout
        while end not in self.buffer:
            left = deadline - self.loop.time()
            if left <= 0 or not await self._fill(left):
                raise AssertionError(f"no complete line: {self.buffer[:300]!r} (eof={self.eof})")
        index = self.buffer.index(end) + len(end)
        data, self.buffer = self.buffer[:index], self.buffer[index:]
        return data

    async def read_message(self, timeout: float = TIMEOUT) -> Any:
        """One compact QMP message, decoded."""
        return orjson.loads(await self.read_line(timeout=timeout))

    async def read_until_closed(self, timeout: float = TIMEOUT) -> bytes:
        deadline = self.loop.time() + timeout
        while not self.eof:
            left = deadline - self.loop.time()
            if left <= 0:
                raise AssertionError(f"still open; received {self.buffer[:300]!r}")
            await self._fill(left)
        data, self.buffer = self.buffer, b""
        return data

    async def expect_nothing(self, wait: float = QUIET) -> None:
        """Assert that nothing (not even EOF) arrives for ``wait`` seconds."""
        assert not self.buffer, self.buffer[:300]
        try:
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected {data[:300]!r}")

    async def greeting(self) -> Any:
        return await self.read_message()

    async def negotiate(self, *capabilities: str) -> None:
        """Read the greeting and enter command mode."""
        await self.greeting()
        args = {"enable": list(capabilities)} if capabilities else {}
        await self.send(orjson.dumps({"execute": "qmp_capabilities", "arguments": args}))
        assert await self.read_message() == {"return": {}}

    async def execute(self, command: str, arguments: dict | None = None, **extra: Any) -> Any:
        """Send one command and return the next message."""
        message = {"execute": command, **extra}
        if arguments is not None:
            message["arguments"] = arguments
        await self.send(orjson.dumps(message))
        return await self.read_message()

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
