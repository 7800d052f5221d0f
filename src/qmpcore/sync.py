"""Former location of :mod:`qmpcore.client.sync`, kept so older imports work.

``import qmpcore.sync`` gives the very module :mod:`qmpcore.client.sync`.
"""

import sys
from typing import TYPE_CHECKING

from .client import sync as _module

if TYPE_CHECKING:  # what type checkers see here: the same public names
    from .client.sync import *  # noqa: F403

sys.modules[__name__] = _module
