"""Former location of :mod:`qmpcore.client.aio`, kept so older imports work.

``import qmpcore.aio`` gives the very module :mod:`qmpcore.client.aio`.
"""

import sys
from typing import TYPE_CHECKING

from .client import aio as _module

if TYPE_CHECKING:  # what type checkers see here: the same public names
    from .client.aio import *  # noqa: F403

sys.modules[__name__] = _module
