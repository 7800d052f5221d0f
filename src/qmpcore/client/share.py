"""Each connection's share of the event loop.

Costly work for one peer (a read that held malformed input, a step of a
large frame's decoding, a further slice of error answers) is followed by a
rest: that peer's next read or step waits the work's time per other
connection that read meanwhile, never more than :data:`MAX_REST`.  A peer
that costs much thus gets its share of the loop while others are busy,
and all of it while they are idle.  Ordinary reads cost nothing here but
a count.

Counted per process: the connections open (the clients' and the embedded
server's) and the reads all of them have made.
"""

from __future__ import annotations

from time import perf_counter

__all__ = ["MAX_REST", "load", "clock", "rest"]

#: The longest rest after one piece of costly work, in seconds.
MAX_REST = 0.25
#: [connections open, reads made by all of them] in this process.
load = [0, 0]
#: The clock costly work is measured with.
clock = perf_counter


def rest(started: float, seen: int) -> tuple[float, int]:
    """The rest owed for costly work begun at ``started`` (a :data:`clock`
    reading), given ``seen``: the read count after the peer's last piece of
    such work plus its own reads since; and the count to keep."""
    reads = load[1]
    others = min(load[0] - 1, reads - seen)
    if others <= 0:
        return 0.0, reads
    return min((clock() - started) * others, MAX_REST), reads
