"""Checked views of the few structures QMP mandates (qemu.qmp's models)."""

from __future__ import annotations

import copy
from collections import abc
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Model", "Greeting", "QMPGreeting", "ErrorResponse", "ErrorInfo"]


class Model:
    """A validated view of ``raw``: a missing member raises ``KeyError``, a
    member of the wrong type ``TypeError``, with qemu.qmp's wording."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _member(self, key: str, type_: type, typestr: str) -> Any:
        if key not in self._raw:
            raise KeyError(f"'{self._name}' object requires '{key}' member")
        value = self._raw[key]
        if not isinstance(value, type_):
            raise TypeError(f"'{self._name}' member '{key}' must be a {typestr}")
        return value

    def __repr__(self) -> str:
        return f"{self._name}({self._raw!r})"


class Greeting(Model):
    """The server greeting: ``greeting.QMP.version``, ``.QMP.capabilities``."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self.QMP = QMPGreeting(self._member("QMP", abc.Mapping, "JSON object"))

    def _asdict(self) -> dict[str, object]:
        """A deep copy as a plain dict (what the legacy API returns)."""
        return dict(copy.deepcopy(self._raw))


class QMPGreeting(Model):
    """The ``QMP`` member of the greeting."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self.version: Mapping[str, object] = self._member("version", abc.Mapping, "JSON object")
        self.capabilities: Sequence[object] = self._member("capabilities", abc.Sequence, "JSON array")


class ErrorResponse(Model):
    """An error reply: ``.error`` (:class:`ErrorInfo`) and ``.id``."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self.error = ErrorInfo(self._member("error", abc.Mapping, "JSON object"))
        self.id: object | None = raw.get("id")


class ErrorInfo(Model):
    """The ``error`` member: ``class_`` and ``desc``."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        super().__init__(raw)
        self.class_: str = self._member("class", str, "string")
        self.desc: str = self._member("desc", str, "string")
