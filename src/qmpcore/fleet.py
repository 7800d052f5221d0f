"""Former location of :mod:`qmpcore.client.fleet`, kept so older imports work.

``import qmpcore.fleet`` gives the very module :mod:`qmpcore.client.fleet`.
"""

import sys
from typing import TYPE_CHECKING

from .client import fleet as _module

if TYPE_CHECKING:  # what type checkers see here: the same public names
    from .client.fleet import *  # noqa: F403

sys.modules[__name__] = _module
