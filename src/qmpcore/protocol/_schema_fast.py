"""Compiled validity tests for command arguments: the fast path of
:meth:`qmpcore.Schema.check`.

Each schema type becomes a predicate built once: ``True`` when QEMU's input
visitor accepts a value (members present, types, enum values, integer
ranges, no unknown members), ``False`` otherwise.  Valid commands (nearly
all of them) cost one pass of these; only a ``False`` sends the command
through the exact visitor in :mod:`._qapi`, which words QEMU's error.  So a
predicate may say ``False`` too often (the exact path then finds nothing
and the command passes) but never ``True`` for a value QEMU refuses: the
differential tests against QEMU hold it to that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Predicates"]

Predicate = Callable[[Any], bool]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_SIGNED = {"int8_t": 0x7F, "int16_t": 0x7FFF, "int32_t": 0x7FFFFFFF, "int64": _INT64_MAX}
_UNSIGNED = {"uint8_t": 0xFF, "uint16_t": 0xFFFF, "uint32_t": 0xFFFFFFFF, "uint64": _UINT64_MAX}


def _any(value: Any) -> bool:
    return True


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _boolean(value: Any) -> bool:
    return type(value) is bool


def _null(value: Any) -> bool:
    return value is None


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _int(value: Any) -> bool:  # introspection's "int" when the real type is unknown
    return type(value) is int and _INT64_MIN <= value <= _UINT64_MAX


def _integer(kind: str) -> Predicate:
    if kind in _SIGNED:
        low, high = -_SIGNED[kind] - 1, _SIGNED[kind]
        return lambda v: type(v) is int and low <= v <= high
    limit = _UNSIGNED.get(kind, _UINT64_MAX)
    # QEMU also takes negative int64 values for unsigned members (wrapped).
    return lambda v: type(v) is int and (0 <= v <= limit or (_INT64_MIN <= v < 0 and v + (1 << 64) <= limit))


_BUILTIN = {"string": _string, "boolean": _boolean, "null": _null, "number": _number, "int": _int, "value": _any}


class Predicates:
    """Validity predicates of one schema, built on first use."""

    def __init__(
        self,
        types: Mapping[str, Mapping[str, Any]],
        int_types: Mapping[tuple[str, str], str],
        branch: Callable[[Mapping[str, Any], Any], str | None],
    ) -> None:
        self._types = types
        self._int_types = int_types
        self._branch = branch  # the exact visitor's choice of an alternate's branch
        self._built: dict[tuple[str, bool], Predicate] = {}  # complete ones only
        self._pending: dict[tuple[str, bool], tuple[Predicate, list[Predicate]]] = {}
        self._lock = threading.RLock()  # a Schema is shared by threads (blocking clients)

    def of(self, type_name: str, closed: bool = True) -> Predicate:
        """The predicate of ``type_name`` (``closed=False``: unknown members
        allowed, for commands that check their own)."""
        key = (type_name, closed)
        found = self._built.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._built.get(key)
            if found is not None:
                return found
            pending = self._pending.get(key)
            if pending is not None:  # recursion: the final one, once built
                return pending[0]
            outermost = not self._pending
            cell: list[Predicate] = []
            self._pending[key] = (lambda v: cell[0](v), cell)
            try:
                cell.append(self._build(type_name, closed))
                if outermost:  # every predicate of this build is complete now
                    for done, (_, filled) in self._pending.items():
                        self._built[done] = filled[0]
            finally:
                if outermost:
                    self._pending.clear()
            return cell[0]

    def _build(self, type_name: str, closed: bool) -> Predicate:
        entry = self._types.get(type_name)
        if entry is None:
            return _any  # unknown types are not checked (as the exact path)
        meta = entry.get("meta-type")
        if meta == "builtin":
            return _BUILTIN.get(entry.get("json-type", ""), _any)
        if meta == "enum":
            values = frozenset(entry.get("values", ()))
            return lambda v: isinstance(v, str) and v in values
        if meta == "array":
            element = self.of(entry["element-type"])
            return lambda v: isinstance(v, list) and all(map(element, v))
        if meta == "alternate":
            branch = self._branch

            def alternate(v: Any) -> bool:
                chosen = branch(entry, v)
                return chosen is not None and self.of(chosen)(v)

            return alternate
        if meta == "object":
            return self._object(entry, closed)
        return _any

    def _member(self, owner: str, member: Mapping[str, Any]) -> Predicate:
        kind = self._int_types.get((owner, member["name"]))
        if kind is None:
            return self.of(member["type"])
        target = self._types.get(member["type"], {})
        if target.get("meta-type") == "array":
            one = _integer(kind)
            return lambda v: isinstance(v, list) and all(map(one, v))
        return _integer(kind)

    def _members(self, entry: Mapping[str, Any]) -> tuple[dict[str, Predicate], frozenset[str]]:
        members = entry.get("members", ())
        checks = {m["name"]: self._member(entry["name"], m) for m in members}
        required = frozenset(m["name"] for m in members if "default" not in m)
        return checks, required

    def _object(self, entry: Mapping[str, Any], closed: bool) -> Predicate:
        checks, required = self._members(entry)
        tag: str | None = entry.get("tag")
        if tag is not None and tag not in required:
            required = required | {tag}  # a union's tag is required (else: the exact path decides)
        variants: dict[str, tuple[dict[str, Predicate], frozenset[str]]] = {}
        if tag is not None:
            for variant in entry.get("variants", ()):
                target = self._types.get(variant["type"])
                if target is not None:
                    variants[variant["case"]] = self._members(target)
        empty: tuple[dict[str, Predicate], frozenset[str]] = ({}, frozenset())

        def check(v: Any) -> bool:
            if not isinstance(v, dict):
                return False
            for name in required:
                if name not in v:
                    return False
            if tag is None:
                extra, extra_required = empty
            elif isinstance(v[tag], str):  # else not an enum value: False below
                extra, extra_required = variants.get(v[tag], empty)
            else:
                return False
            for name in extra_required:
                if name not in v:
                    return False
            for name, item in v.items():
                test = checks.get(name) or extra.get(name)
                if test is None:
                    if closed:
                        return False
                elif not test(item):
                    return False
            return True

        return check
