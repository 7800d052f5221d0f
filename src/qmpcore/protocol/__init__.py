"""Sans-IO protocol state machines: bytes in, events and bytes out.

Nothing here touches a socket or an event loop; the clients in
:mod:`qmpcore.aio` and :mod:`qmpcore.sync` and the embedded server in
:mod:`qmpcore.server` move bytes between sockets and these objects.
"""

from .qga_client import QGAClientProtocol
from .qmp_client import QMPClientProtocol

__all__ = ["QMPClientProtocol", "QGAClientProtocol"]
