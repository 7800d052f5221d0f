"""Drop-in front ends for code written against other QMP libraries.

* :mod:`qmpcore.compat.qemu_qmp` -- ``qemu.qmp`` 0.0.6 (asyncio ``QMPClient``).
* :mod:`qmpcore.compat.legacy` -- ``qemu.qmp.legacy.QEMUMonitorProtocol``.
* :mod:`qmpcore.compat.qmp` -- the older standalone ``qmp.py``
  (``QEMUMonitorProtocol`` with ``cmd(name, args, cmd_id)``).

Each keeps its library's names, signatures and behaviour and runs on
qmpcore's clients; change one import to switch.  To run code that imports
``qemu.qmp`` unchanged (QEMU's ``qmp-shell``, ``qmp_tui``, ``QEMUMachine``),
map it with :func:`qmpcore.compat.importer.install` or run
``python -m qmpcore.compat MODULE [ARGS...]``.
"""

import logging as _logging

# Silent unless the application configures logging, as qemu.qmp is.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
