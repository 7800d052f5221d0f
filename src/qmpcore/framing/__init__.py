"""The framing layer: bytes in, complete JSON values out.

Two implementations with identical behaviour: the compiled one
(``qmpcore.framing._framer``, built from ``src/_framer.pyx``) and the
pure-Python twin (:mod:`qmpcore.framing.pure`).  Setting
``QMPCORE_NO_EXTENSIONS=1`` before import selects the pure one;
:data:`implementation` tells which is live.  Nothing here imports from a
higher layer.
"""

from __future__ import annotations

import os as _os
from typing import Any

from .qdict import qdict_order
from .rules import Answers as _PyAnswers
from .wire import SYNC, encode

implementation: str
#: The classes of answer items (``Framer.answer_errors``): the twin's, and
#: the compiled framer's when it is built.
ANSWERS: tuple[type[Any], ...] = (_PyAnswers,)
if _os.environ.get("QMPCORE_NO_EXTENSIONS", "") not in ("", "0"):
    from .pure import Framer

    implementation = "python"
    try:  # (a compiled framer made by hand still gets its answers taken)
        from ._framer import Answers as _CAnswers

        ANSWERS = (_CAnswers, _PyAnswers)
    except ImportError:
        pass
else:
    try:
        from ._framer import Answers as _CAnswers
        from ._framer import Framer  # type: ignore[assignment]  # the same interface, compiled
        from ._framer import qdict_order as qdict_order  # (its compiled twin)

        implementation = "cython"
        ANSWERS = (_CAnswers, _PyAnswers)
    except ImportError:  # no compiler at install time: the twin serves
        from .pure import Framer

        implementation = "python"

__all__ = ["Framer", "SYNC", "ANSWERS", "encode", "implementation", "qdict_order"]
