"""Why a connect function failed, in words that say how to fix it.

Every connect function passes its failure through :func:`connect_error`,
which returns a :class:`~qmpcore.ConnectError` subclass naming the address
and the usual cause: no such socket, nothing listening, permissions, a
monitor another client holds, or a socket that speaks the other protocol.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import re
import stat

from ..errors import (
    CommandError,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    HandshakeLost,
    ProtocolError,
    SocketNotFound,
    SocketPermissionError,
    WrongProtocol,
)
from .address import Address

__all__ = ["connect_error", "permission_hint"]


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        import grp

        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except (ImportError, KeyError):
        return f"gid {gid}"


def permission_hint(path: str | bytes) -> str:
    """Who owns the socket at ``path`` and its mode, against who we are."""
    me = f"this process runs as {_owner(os.geteuid())}" if hasattr(os, "geteuid") else ""
    try:
        st = os.stat(path)
    except OSError:
        return f"a directory on the path is closed to this user; {me}"
    return (
        f"the socket is owned by {_owner(st.st_uid)}, group {_group(st.st_gid)}, "
        f"mode {stat.filemode(st.st_mode)[1:]} ({st.st_mode & 0o777:o}); {me}: "
        "run as that user or group, or let QEMU's user change them"
    )


def _not_found_hint(address: Address, agent: bool) -> str:
    path = str(address)
    if agent:
        return (
            f"is qemu-ga started with -m unix-listen -p {path}, or QEMU with "
            f"-chardev socket,path={path},server=on,wait=off,id=qga0 for the agent's virtserialport?"
        )
    return f"is QEMU started with -qmp unix:{path},server=on,wait=off?"


def _refused_hint(address: Address, agent: bool) -> str:
    if address.is_unix:
        return "the socket file exists but nothing listens on it: QEMU exited and left it behind, or is still starting"
    if agent:
        return f"nothing listens on {address}: is the agent's chardev a TCP server on this port?"
    return f"nothing listens on {address}: is QEMU started with -qmp tcp:{address},server=on,wait=off?"


def _timeout(address: Address, timeout: float | None, agent: bool, connected: bool, greeted: bool) -> ConnectError:
    within = "" if timeout is None else f" within {timeout:g} s"
    if not connected:
        return ConnectTimeout(
            f"connection not ready: no connection{within}",
            address=address,
            hint="is the host reachable and the port open?",
        )
    if agent:
        return ConnectTimeout(
            f"connection not ready: connected, but no answer to guest-sync-delimited{within}",
            address=address,
            hint=(
                "no agent runs in the guest, or another client holds the socket; "
                "a QMP monitor held by another client is silent too (QMP monitors need connect())"
            ),
        )
    if greeted:
        return ConnectTimeout(
            f"connection not ready: greeting received, but no reply to qmp_capabilities{within}",
            address=address,
            hint="QEMU is stopped or too busy to answer",
        )
    return ConnectTimeout(
        f"connection not ready: connected, but no QMP greeting{within}",
        address=address,
        hint=(
            "another client holds this monitor (QEMU serves one client at a time), "
            "or this is a guest agent socket: use connect_guest_agent() for those"
        ),
    )


def connect_error(
    exc: BaseException,
    address: Address,
    *,
    agent: bool,
    timeout: float | None,
    connected: bool,
    greeted: bool = False,
) -> ConnectError:
    """The :class:`~qmpcore.ConnectError` to raise for ``exc``.

    ``agent`` says which kind of connect function failed; ``connected``
    whether the socket had connected, ``greeted`` whether a QMP greeting had
    arrived (they tell a busy monitor from an unreachable host).
    """
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, (builtins.TimeoutError, asyncio.TimeoutError)):
        return _timeout(address, timeout, agent, connected, greeted)
    if isinstance(exc, ProtocolError):
        hint = (
            "is this a guest agent socket? QMP monitors need connect()"
            if agent
            else "is this a QMP monitor? guest agent sockets need connect_guest_agent()"
        )
        return WrongProtocol(str(exc), address=address, hint=hint)
    if isinstance(exc, (ConnectionLost, ConnectionResetError, BrokenPipeError)) and connected:
        return HandshakeLost(
            f"the server closed the connection during the handshake ({exc})",
            address=address,
            hint="the monitor may be in use, or QEMU exiting; try again",
        )
    if isinstance(exc, CommandError):
        return ConnectError(f"capabilities negotiation failed: {exc}", address=address)
    if isinstance(exc, OSError):
        code = exc.errno
        if code is None:  # asyncio tried several addresses: "Multiple exceptions: [Errno 111] ..."
            codes = set(re.findall(r"\[Errno (\d+)\]", str(exc)))
            code = int(codes.pop()) if len(codes) == 1 else None
        if code == errno.ENOENT:
            return SocketNotFound("no such socket", address=address, hint=_not_found_hint(address, agent))
        if code == errno.ECONNREFUSED:
            return ConnectionRefused("connection refused", address=address, hint=_refused_hint(address, agent))
        if code in (errno.EACCES, errno.EPERM):
            hint = permission_hint(address.sockaddr) if address.is_unix else ""
            return SocketPermissionError("permission denied", address=address, hint=hint, errno=code)
        return ConnectError(exc.strerror or str(exc), address=address, errno=code)
    return ConnectError(str(exc) or type(exc).__name__, address=address)
