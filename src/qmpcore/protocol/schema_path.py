"""libvirt's path language over ``query-qmp-schema`` data.

A path is slash-separated: a command or event name, then ``arg-type`` or
``ret-type``, then components chosen by their first character:

* ``name`` -- the object member ``name``; ``*name`` -- only if optional;
* ``+case`` -- the variant ``case`` of a union;
* ``^value`` -- the enum has ``value`` (may be followed by ``$feature``:
  that enum value has the feature);
* ``!json`` -- the builtin's JSON type is ``json`` (``int``, ``string``, ...);
* ``$feature`` -- the command, event or object has ``feature``.

Arrays are entered without a component; alternates are tried branch by
branch, first success wins.  A name starting with another non-letter
character is written after one such character (``" 9p"``).  The answers
follow libvirt's ``virQEMUQAPISchemaPathGet`` (``qemu_qapi.c``) exactly,
quirks included, so a probe means here what it means in libvirt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import SchemaPathError

__all__ = ["resolve"]

# Results, as in libvirt: found, not found, malformed schema, a boolean
# component followed by more components, another error.
_FOUND, _MISSING, _BAD_SCHEMA, _NOT_LAST, _ERROR = 1, 0, -2, -3, -1
_MAX_DEPTH = 1000
#: Alternates inside alternates (QEMU nests them a level or two); past this a
#: schema is taken as hostile, whatever the interpreter's recursion limit.
_MAX_ALTERNATE_NESTING = 64


class _Next:
    """Go on with the type ``name``."""

    __slots__ = ("name",)

    def __init__(self, name: Any) -> None:
        self.name = name


class _Walk:
    """One traversal: the components left and the entry found."""

    __slots__ = ("types", "parts", "at", "prev", "found", "depth", "alternates")

    def __init__(self, types: Mapping[str, Mapping[str, Any]], parts: list[str]) -> None:
        self.types = types
        self.parts = parts
        self.at = 1  # parts[0] is the command or event name
        self.prev: str | None = parts[0]
        self.found: Mapping[str, Any] | None = None
        self.depth = 0
        self.alternates = 0  # alternates being tried, one inside another

    def more(self) -> bool:
        return self.at < len(self.parts)

    def next(self) -> str:
        part = self.parts[self.at]
        self.at += 1
        self.prev = part
        return part

    def save(self) -> tuple[int, str | None, Mapping[str, Any] | None, int]:
        return self.at, self.prev, self.found, self.depth

    def restore(self, state: tuple[int, str | None, Mapping[str, Any] | None, int]) -> None:
        self.at, self.prev, self.found, self.depth = state


def _split(part: str) -> tuple[str, str]:
    """(modifier, name): a leading non-letter is a modifier, dropped from the name."""
    first = part[:1]
    if first and first.isascii() and first.isalpha():
        return first, part
    return first, part[1:]


def _named(entry: Mapping[str, Any], field: str, key: str, name: str) -> Mapping[str, Any] | None:
    items = entry.get(field)
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, Mapping) and item.get(key) == name and isinstance(item.get(key), str):
            return item
    return None


def _has_feature(name: str, entry: Mapping[str, Any]) -> int:
    features = entry.get("features")
    if not isinstance(features, list):
        return _MISSING
    for feature in features:
        if not isinstance(feature, str):
            return _BAD_SCHEMA
        if feature == name:
            return _FOUND
    return _MISSING


def _object(entry: Mapping[str, Any], walk: _Walk) -> int | _Next:
    modifier, name = _split(walk.next())
    if modifier in ("^", "!"):
        return _MISSING
    if modifier == "$":
        return _NOT_LAST if walk.more() else _has_feature(name, entry)
    if modifier == "+":
        chosen = _named(entry, "variants", "case", name)
    else:
        chosen = _named(entry, "members", "name", name)
        if modifier == "*" and chosen is not None and "default" not in chosen:
            return _MISSING
    if chosen is None:
        return _MISSING
    return _Next(chosen.get("type"))


def _array(entry: Mapping[str, Any], walk: _Walk) -> int | _Next:
    element = entry.get("element-type")
    if not isinstance(element, str):
        return _BAD_SCHEMA
    return _Next(element)  # arrays take no component


def _command(entry: Mapping[str, Any], walk: _Walk) -> int | _Next:
    modifier, name = _split(walk.next())
    if modifier in ("^", "!", "+", "*"):
        return _MISSING
    if modifier == "$":
        return _NOT_LAST if walk.more() else _has_feature(name, entry)
    target = entry.get(name)
    if not isinstance(target, str):
        return _MISSING
    return _Next(target)


def _enum(entry: Mapping[str, Any], walk: _Walk) -> int | _Next:
    part = walk.next()
    if not part.startswith("^"):
        return _MISSING
    feature: str | None = None
    if walk.more():  # ^value/$feature: a feature of that enum value
        following = walk.next()
        if not following.startswith("$") or walk.more():
            return _NOT_LAST
        feature = following[1:]
    value = part[1:]
    members = entry.get("members")
    if isinstance(members, list):  # QEMU >= 6.2
        for member in members:
            name = member.get("name") if isinstance(member, Mapping) else None
            if not isinstance(name, str):
                return _BAD_SCHEMA
            if name == value:
                return _FOUND if feature is None else _has_feature(feature, member)
        return _MISSING
    if feature is not None:  # plain "values" carry no features
        return _MISSING
    values = entry.get("values")
    if not isinstance(values, list):
        return _BAD_SCHEMA
    return _FOUND if value in (v for v in values if isinstance(v, str)) else _MISSING


def _builtin(entry: Mapping[str, Any], walk: _Walk) -> int | _Next:
    part = walk.next()
    if not part.startswith("!"):
        return _MISSING
    if walk.more():
        return _NOT_LAST
    json_type = entry.get("json-type")
    if not isinstance(json_type, str):
        return _ERROR
    return _FOUND if json_type == part[1:] else _MISSING


def _alternate(entry: Mapping[str, Any], walk: _Walk) -> int | _Next:
    members = entry.get("members")
    if not isinstance(members, list):
        return _BAD_SCHEMA
    if walk.alternates >= _MAX_ALTERNATE_NESTING:
        return _BAD_SCHEMA
    start = walk.save()
    walk.alternates += 1
    try:
        for member in members:
            branch = member.get("type") if isinstance(member, Mapping) else None
            if not isinstance(branch, str):
                continue
            walk.restore(start)
            result = _traverse(branch, walk)
            if result != _MISSING:
                return result
        return _MISSING
    finally:
        walk.alternates -= 1


_BY_META: dict[str, Callable[[Mapping[str, Any], _Walk], int | _Next]] = {
    "object": _object,
    "array": _array,
    "command": _command,
    "event": _command,
    "enum": _enum,
    "builtin": _builtin,
    "alternate": _alternate,
}


def _traverse(name: Any, walk: _Walk) -> int:
    # A loop rather than recursion: only alternates need to come back.
    while True:
        walk.depth += 1
        if walk.depth > _MAX_DEPTH + 1:
            return _BAD_SCHEMA  # a loop in the schema
        entry = walk.types.get(name) if isinstance(name, str) else None
        if entry is None:
            return _BAD_SCHEMA
        if not walk.more():
            walk.found = entry
            return _FOUND
        meta = entry.get("meta-type")
        if not isinstance(meta, str):
            return _BAD_SCHEMA
        step = _BY_META.get(meta)
        if step is None:
            return _MISSING
        result = step(entry, walk)
        if not isinstance(result, _Next):
            return result
        name = result.name


def resolve(types: Mapping[str, Mapping[str, Any]], path: str) -> tuple[bool, Mapping[str, Any] | None]:
    """Answer ``path`` over ``types`` (schema entries by name).

    Returns ``(matched, entry)``: ``entry`` is the schema entry a type query
    ends on (``None`` for boolean components: ``^``, ``!``, ``$``).  Raises
    :class:`~qmpcore.SchemaPathError` for an empty path, a boolean component
    that is not last, or a schema that breaks QEMU's rules on the way
    (libvirt reports those as errors too).
    """
    if not isinstance(path, str) or not path:
        raise SchemaPathError(f"malformed schema path {path!r}: expected 'command/arg-type/member/...'")
    parts = path.split("/")
    if parts[0] not in types:
        return False, None
    walk = _Walk(types, parts)
    try:
        result = _traverse(parts[0], walk)
    except RecursionError:  # alternates nested hundreds deep: a hostile schema
        result = _BAD_SCHEMA
    if result == _NOT_LAST:
        raise SchemaPathError(
            f"terminal component {walk.prev!r} of schema path {path!r} must be last "
            "(only ^value/$feature may follow another component)"
        )
    if result == _BAD_SCHEMA:
        raise SchemaPathError(f"malformed QAPI schema when querying {walk.prev!r} of {path!r}")
    return result == _FOUND, walk.found if result == _FOUND else None
