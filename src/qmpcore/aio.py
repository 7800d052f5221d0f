"""Former location of :mod:`qmpcore.client.aio`, kept so older imports work.

``import qmpcore.aio`` gives the very module :mod:`qmpcore.client.aio`.
"""

import sys

from .client import aio as _module

sys.modules[__name__] = _module
