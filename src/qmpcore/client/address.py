"""Where a client connects: a unix socket path or a ``(host, port)`` pair."""

from __future__ import annotations

import os
import socket
from typing import Any, NamedTuple, Union

__all__ = ["Address", "parse_address", "AddressLike"]

AddressLike = Union[str, bytes, "os.PathLike[str]", tuple[str, int]]


class Address(NamedTuple):
    """A parsed address; ``sockaddr`` is what ``socket.connect`` takes."""

    family: int
    #: A path (``str``/``bytes``) for unix sockets, ``(host, port)`` for TCP.
    sockaddr: Any

    @property
    def is_unix(self) -> bool:
        return self.family == getattr(socket, "AF_UNIX", None)

    def __str__(self) -> str:
        if self.is_unix:
            return os.fsdecode(self.sockaddr)
        host, port = self.sockaddr
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: Any) -> Address:
    """Check and normalise an address; raise TypeError/ValueError if it is bad.

    A ``str``, ``bytes`` or path-like object is a unix socket path; a
    ``(host, port)`` tuple is TCP (IPv4 or IPv6 literal, or a host name).
    """
    if isinstance(address, (str, bytes, os.PathLike)):
        path = os.fspath(address)
        if not path:
            raise ValueError("empty unix socket path")
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError("unix sockets are not available on this platform")
        return Address(socket.AF_UNIX, path)
    if isinstance(address, (tuple, list)) and len(address) == 2:
        host, port = address
        if not isinstance(host, str) or not host:
            raise ValueError(f"bad host in address {address!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad port in address {address!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return Address(family, (host, port))
    raise TypeError(f"address must be a unix socket path or a (host, port) tuple, not {type(address).__name__}")
