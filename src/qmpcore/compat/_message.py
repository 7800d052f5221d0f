"""``Message``: one QMP message as a mutable mapping (qemu.qmp's class).

A message holds a dict, bytes, or both, and converts lazily.  Messages the
adapter receives are built from values qmpcore already decoded, so nothing
is parsed twice; ``bytes(msg)`` encodes only when asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping

from ._errors import DeserializationError, UnexpectedTypeError

__all__ = ["Message"]


class Message(MutableMapping[str, object]):
    """A QMP message, built from a mapping or from raw JSON ``bytes``.

    ``eager=True`` converts at once, so a bad value fails in the
    constructor (:class:`DeserializationError`, :class:`UnexpectedTypeError`,
    or ``TypeError``/``ValueError`` from encoding).  ``bytes(msg)`` is the
    compact encoding, ``str(msg)`` an indented one.
    """

    def __init__(self, value: bytes | Mapping[str, object] = b"{}", *, eager: bool = True) -> None:
        self._data: bytes | None = None
        self._obj: dict[str, object] | None = None
        if isinstance(value, bytes):
            self._data = value
            if eager:
                self._obj = self._deserialize(value)
        else:
            self._obj = dict(value)
            if eager:
                self._data = self._serialize(self._obj)

    @classmethod
    def _from_dict(cls, obj: dict[str, object]) -> Message:
        """Wrap a dict decoded elsewhere, without copying or re-encoding it."""
        msg = cls.__new__(cls)
        msg._data = None
        msg._obj = obj
        return msg

    # -- MutableMapping ---------------------------------------------------

    def __getitem__(self, key: str) -> object:
        return self._object[key]

    def __setitem__(self, key: str, value: object) -> None:
        self._object[key] = value
        self._data = None

    def __delitem__(self, key: str) -> None:
        del self._object[key]
        self._data = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._object)

    def __len__(self) -> int:
        return len(self._object)

    # -- conversions ------------------------------------------------------

    def __repr__(self) -> str:
        if self._obj is not None:
            return f"Message({self._obj!r})"
        return f"Message({bytes(self)!r})"

    def __str__(self) -> str:
        return json.dumps(self._object, indent=2)

    def __bytes__(self) -> bytes:
        if self._data is None:
            self._data = self._serialize(self._obj or {})
        return self._data

    @property
    def _object(self) -> dict[str, object]:
        if self._obj is None:
            self._obj = self._deserialize(self._data or b"{}")
        return self._obj

    @classmethod
    def _serialize(cls, value: object) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    @classmethod
    def _deserialize(cls, data: bytes) -> dict[str, object]:
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as err:
            raise DeserializationError("Failed to deserialize QMP message.", data) from err
        if not isinstance(obj, dict):
            raise UnexpectedTypeError("QMP message is not a JSON object.", obj)
        return obj
