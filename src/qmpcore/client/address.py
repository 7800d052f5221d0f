"""Where a client connects: a unix socket path or a ``(host, port)`` pair.

The one address type and parser of the package: the clients, the fleet,
the embedded server, the compatibility adapters and the command line all
take what :func:`parse_address` takes.  From Python, a ``str`` or path is a
unix socket and a tuple is TCP; from text (a command line, qemu.qmp's
``"host:port"`` strings), ``parse_address(text, text=True)`` reads
``host:port`` and ``[v6]:port`` as TCP and anything else as a path.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, NamedTuple, Union

__all__ = ["Address", "AddressError", "parse_address", "AddressLike"]

AddressLike = Union[str, bytes, "os.PathLike[str]", tuple[str, int]]

# host:port, [v6]:port; a host has no ':', '/', '[' or ']'.
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:/\[\]]*)):(?P<port>[^:/\[\]]*)")


class AddressError(ValueError):
    """An address that cannot be understood; the message says which part and why.

    ``text`` is the address as given, ``part`` the part at fault (``"host"``,
    ``"port"`` or ``""`` for the whole) and ``value`` that part's text, so
    callers with their own wording (qemu.qmp's ``Bad port: ...``) can use it.
    """

    def __init__(self, message: str, text: str = "", part: str = "", value: str = "") -> None:
        super().__init__(message)
        self.text = text
        self.part = part
        self.value = value


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


def _from_text(text: str) -> Address | None:
    """The TCP address ``text`` spells, or None when it is a path."""
    if "/" in text or ":" not in text or os.path.exists(text):
        return None  # an existing file always wins: a socket named vm:1 stays reachable
    found = _HOST_PORT.fullmatch(text)
    if found is None:
        if text.startswith("["):
            raise AddressError(f"expected [IPv6]:port, got {text!r} (e.g. [::1]:4444)", text)
        host, _, port = text.rpartition(":")
        if ":" in host and "[" not in text and "]" not in text:
            raise AddressError(f"an IPv6 address needs brackets: [{host}]:{port}", text, "host", host)
        raise AddressError(
            f"cannot read {text!r} as host:port (write IPv6 hosts in brackets, as in '[::1]:4444'; "
            f"a unix socket path with ':' needs a '/', as in './{text}')",
            text,
        )
    host = found["v6"] if found["v6"] is not None else found["host"]
    port = found["port"]
    if not host:
        raise AddressError(f"no host before the port in {text!r}", text, "host", host)
    if not port:
        raise AddressError(f"no port after the host in {text!r}", text, "port", port)
    if not port.isdigit() or not port.isascii():
        raise AddressError(f"port {port!r} is not a number in {text!r}", text, "port", port)
    if len(port) > 5 or not 0 < int(port) < 65536:
        raise AddressError(f"port {port} is out of range (1-65535) in {text!r}", text, "port", port)
    return Address(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port)))


def parse_address(address: Any, *, text: bool = False) -> Address:
    """Check and normalise an address; raise TypeError/ValueError if it is bad.

    A ``str``, ``bytes`` or path-like object is a unix socket path; a
    ``(host, port)`` tuple is TCP (IPv4 or IPv6 literal, or a host name).
    With ``text=True`` a ``str`` is read as a user would type it:
    ``host:port`` or ``[v6]:port`` is TCP, anything else (or an existing
    file) a path; a bad port raises :class:`AddressError` saying which
    part is wrong (``port 'abc' is not a number in 'host:abc'``).
    """
    if text and isinstance(address, str):
        if not address:
            raise AddressError("empty address", address)
        tcp = _from_text(address)
        if tcp is not None:
            return tcp
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
