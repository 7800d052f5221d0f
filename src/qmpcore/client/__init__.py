"""The client layer: sockets around the sans-IO protocol objects.

:mod:`.aio` (asyncio clients), :mod:`.sync` (blocking clients),
:mod:`.fleet` (many connections in one loop), with the pieces they share:
:mod:`.address`, :mod:`.core` and :mod:`.eventqueue`.  Imports only from
:mod:`qmpcore.protocol`, :mod:`qmpcore.framing` and :mod:`qmpcore.errors`.
"""
