"""Former location of :mod:`qmpcore.client.sync`, kept so older imports work.

``import qmpcore.sync`` gives the very module :mod:`qmpcore.client.sync`.
"""

import sys

from .client import sync as _module

sys.modules[__name__] = _module
