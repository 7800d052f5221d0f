"""QEMU's QDict member order, in pure Python.

QEMU keeps a JSON object's members in a QDict: a hash table of
:data:`BUCKETS` buckets keyed by ``tdb_hash`` (``qobject/qdict.c``), each
bucket a list with the newest member first.  Iterating it (to report the
first unexpected argument, or to encode a reply) goes bucket by bucket.
A client chooses the keys of its requests, so the order must cost linear
time: a counting sort by bucket.  The compiled framer has the same
function (``qmpcore.framing._framer.qdict_order``), which
:mod:`qmpcore.framing` exports when it is built; this one is its twin.
"""

from __future__ import annotations

import operator

__all__ = ["BUCKETS", "tdb_hash", "qdict_order"]

#: Buckets of a QDict (QDICT_BUCKET_MAX).
BUCKETS = 512

# tdb_hash shifts byte i left by i * 5 % 24 bits: the shifts repeat every
# 24 bytes, so a long key is hashed as 24 sums of every 24th byte (C speed).
_TDB_PERIOD = 24
_TDB_SHIFTS = tuple(i * 5 % _TDB_PERIOD for i in range(_TDB_PERIOD))


def tdb_hash(key: str) -> int:
    """QEMU's ``tdb_hash`` of ``key`` (its UTF-8 bytes), unsigned 32-bit."""
    data = key.encode("utf-8", "surrogatepass")
    value = 0x238F13AF * len(data)
    if len(data) <= _TDB_PERIOD:
        value += sum(map(operator.lshift, data, _TDB_SHIFTS))
    else:
        for start, shift in enumerate(_TDB_SHIFTS):
            value += sum(data[start::_TDB_PERIOD]) << shift
    return (1103515243 * (value & 0xFFFFFFFF) + 12345) & 0xFFFFFFFF


def qdict_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The order in which QEMU iterates a QDict whose keys were inserted in
    the order ``keys``: by hash bucket, newest first within a bucket."""
    if len(keys) < 2:
        return keys
    buckets: dict[int, list[str]] = {}
    for key in reversed(keys):
        bucket = tdb_hash(key) % BUCKETS
        found = buckets.get(bucket)
        if found is None:
            buckets[bucket] = [key]
        else:
            found.append(key)
    out: list[str] = []
    for bucket in sorted(buckets):  # (at most BUCKETS of them)
        out += buckets[bucket]
    return tuple(out)
