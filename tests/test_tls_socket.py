"""The blocking client's TLS socket: plain bytes in and out with a non-blocking
socket's semantics, whatever the socket takes at a time."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest

from qmpcore.client.address import Address
from qmpcore.client.tls import TLSSocket, handshake_sync
from tls_support import Certs, certs  # noqa: F401 -- fixtures

SIZE = 3 << 20


@pytest.fixture
def tls_pair(certs: Certs):  # noqa: F811
    """(client TLSSocket, server ssl socket) over a socketpair with small buffers."""
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    server: list = []
    thread = threading.Thread(target=lambda: server.append(certs.server_context().wrap_socket(b, server_side=True)))
    thread.start()
    client, early = handshake_sync(a, certs.client_context(), "localhost", Address(socket.AF_UNIX, "pair"), None)
    thread.join(10)
    assert early == b"" and isinstance(client, TLSSocket)
    yield client, server[0]
    client.close()
    server[0].close()


def test_send_with_a_full_socket(tls_pair):
    client, server = tls_pair
    payload = os.urandom(SIZE)
    received = bytearray()

    def slow_reader() -> None:
        while len(received) < SIZE:
            chunk = server.recv(65536)
            if not chunk:
                return
            received.extend(chunk)
            time.sleep(0.0005)

    thread = threading.Thread(target=slow_reader)
    thread.start()
    client.setblocking(True)
    view = memoryview(payload)
    blocked = 0
    poller = select.poll()
    poller.register(client, select.POLLOUT)
    while view:
        try:
            view = view[client.send(view, socket.MSG_DONTWAIT) :]
        except BlockingIOError:
            blocked += 1
            poller.poll(10_000)
    thread.join(30)
    assert bytes(received) == payload
    assert blocked > 0  # the socket was full at times: those paths ran


def test_receive_into_any_buffer(tls_pair):
    client, server = tls_pair
    payload = os.urandom(1 << 20)
    thread = threading.Thread(target=lambda: server.sendall(payload))
    thread.start()
    client.setblocking(True)
    got = bytearray()
    small, big = bytearray(1000), bytearray(1 << 16)
    while len(got) < len(payload):
        buffer = small if len(got) % 3 else big
        n = client.recv_into(buffer)
        assert n > 0
        got += buffer[:n]
    thread.join(10)
    assert bytes(got) == payload
    # Nothing more: a non-blocking read says so; the end of the stream reads as 0.
    with pytest.raises(BlockingIOError):
        client.recv_into(big, 0, socket.MSG_DONTWAIT)
    server.shutdown(socket.SHUT_WR)
    assert client.recv_into(big) == 0
