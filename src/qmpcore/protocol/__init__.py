"""Sans-IO protocol state machines: bytes in, events and bytes out.

Nothing here touches a socket or an event loop; the clients in
:mod:`qmpcore.aio` and :mod:`qmpcore.sync` and the embedded server in
:mod:`qmpcore.server` move bytes between sockets and these objects.

The client protocols have h11's shape: ``receive_data(bytes)``, then
``next_event()`` until it returns None; ``send_command(...)`` returns the
bytes to write and ``data_to_send()`` the bytes released later; ``feed()``
is the batch form.  What ``next_event()`` returns is a
:class:`~qmpcore.protocol.events.ProtocolEvent`.
"""

from .events import ProtocolEvent
from .qga_client import QGAClientProtocol
from .qmp_client import QMPClientProtocol

__all__ = ["QMPClientProtocol", "QGAClientProtocol", "ProtocolEvent"]
