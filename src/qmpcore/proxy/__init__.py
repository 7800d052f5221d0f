"""A multiplexing QMP proxy: one monitor connection, many clients, policies per listener.

::

    from qmpcore.proxy import Proxy, ProxyListener, READ_ONLY

    async with Proxy("/run/vm1/qmp.sock", ["/run/vm1/proxy.sock",
                     ProxyListener("/run/vm1/monitoring.sock", READ_ONLY)]):
        ...

``qmpcore proxy`` runs one from the command line.
"""

from __future__ import annotations

from ._proxy import Proxy, ProxyListener, ProxyStats
from .policy import ALLOW_ALL, READ_ONLY, Policy
from .record import Recorder

__all__ = ["Proxy", "ProxyListener", "ProxyStats", "Policy", "ALLOW_ALL", "READ_ONLY", "Recorder"]
