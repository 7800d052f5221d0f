"""Former location of :mod:`qmpcore.client.fleet`, kept so older imports work.

``import qmpcore.fleet`` gives the very module :mod:`qmpcore.client.fleet`.
"""

import sys

from .client import fleet as _module

sys.modules[__name__] = _module
