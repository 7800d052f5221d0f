"""The client layer: sockets around the sans-IO protocol objects.

:mod:`.aio` (asyncio clients), :mod:`.sync` (blocking clients),
:mod:`.fleet` (many connections in one loop), with the pieces they share:
:mod:`.address` (the one address type and parser), :mod:`.core`,
:mod:`.eventqueue`, :mod:`.diagnose` (why a connect failed),
:mod:`.limits` (the open-file limit) and :mod:`._log` (the DEBUG trace).  Imports only from
:mod:`qmpcore.protocol`, :mod:`qmpcore.framing` and :mod:`qmpcore.errors`.
"""
