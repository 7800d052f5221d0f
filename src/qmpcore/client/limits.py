"""The open-file limit: one helper for everything that opens many sockets.

A :class:`~qmpcore.Fleet` opens one connection per VM and the embedded
server two or four sockets per simulated VM; both make room first with
:func:`ensure_fd_limit`.
"""

from __future__ import annotations

import errno
import os

__all__ = ["ensure_fd_limit", "FD_RESERVE"]

#: File descriptors kept free for everything that is not a connection.
FD_RESERVE = 64


def ensure_fd_limit(needed: int, *, strict: bool = True) -> int:
    """Raise ``RLIMIT_NOFILE`` so ``needed`` more descriptors can be opened.

    Raises the soft limit, and the hard limit too where the process may;
    returns the resulting soft limit.  When the limit cannot go high enough,
    ``strict`` raises :class:`OSError` (``EMFILE``) with the numbers and the
    remedy; otherwise the limit is left as high as it could go.
    """
    try:
        import resource
    except ImportError:  # Windows: no such limit to manage
        return needed
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = FD_RESERVE
    want = needed + in_use + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= want:
        return soft if soft != infinite else want
    if hard != infinite and hard < want:
        try:  # privileged processes may raise the hard limit as well
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    target = want if hard == infinite else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < want and strict:
        raise OSError(
            errno.EMFILE,
            f"{needed} connections need about {want} open files, but the limit is "
            f"{target} (hard limit {hard}) and cannot be raised further; "
            f"raise it (ulimit -n, LimitNOFILE=, /etc/security/limits.conf) "
            f"or use fewer VMs per process",
        )
    return target
