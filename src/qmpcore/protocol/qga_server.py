"""Sans-IO guest agent server: how qemu-ga 7.2 reads and answers.

qemu-ga shares QEMU's JSON parser and dispatcher, so this is the QMP server
protocol with qemu-ga's differences (corpus ``qga_*``):

* no greeting and no capabilities negotiation (``qmp_capabilities`` is an
  unknown command) and no ``exec-oob``;
* every message ends with ``\\n`` alone, not CRLF;
* the successful reply to ``guest-sync-delimited`` is preceded by a 0xFF
  byte, so a client can find it after skipping stale output;
* one parser serves every client of a listening socket: a previous client's
  unfinished input stays buffered across reconnects until something (0xFF,
  a control byte, the end of that message) resynchronises it.  Call
  :meth:`QGAServerProtocol.connection_made` for each new client; it clears
  the output and unanswered requests but keeps the parser.
"""

from __future__ import annotations

from typing import Any

from .qmp_server import NO_ID, Request, ServerProtocolBase

__all__ = ["QGAServerProtocol", "Request", "NO_ID", "SYNC_BYTE"]

#: qemu-ga's sentinel byte (QGA_SENTINEL_BYTE).
SYNC_BYTE = b"\xff"


class QGAServerProtocol(ServerProtocolBase):
    """The guest agent side of a QGA channel (one object per agent)."""

    _terminator = b"\n"
    _reply_prefixes = {"guest-sync-delimited": SYNC_BYTE}

    def connection_made(self) -> None:
        """A new client: forget the old one's requests, keep the parser."""
        self._drop_requests()

    def _skips_queue(self, message: dict[str, Any]) -> bool:
        return False  # qemu-ga dispatches everything in order
