"""Undo what importing py-libp2p 0.8.1 does to the process's logging configuration.

On import, ``libp2p.utils.logging.setup_logging`` clears the ``libp2p`` logger's handlers and sets
``propagate = False`` (unless ``LIBP2P_DEBUG`` is set), so its warnings never reach the handlers the
daemon configures. And ``swarm_connection`` logs through the module-level ``logging.warning()``
functions, which log on the root logger and, if the root has no handler yet, silently run
``logging.basicConfig()``; a later ``basicConfig`` by the daemon then does nothing.

It also logs, at error level and over several lines, failures that the daemon reports itself in one
line with their reason (a refused dial, a peer with another swarm key, a stream the peer would not
open): those records are left out, so an expected refusal is one line in the log (issue 15). So is
yamux's error for a connection this process closed while yamux was reading it (``trio.ClosedResourceError``
in ``handle_incoming``, say after the daemon refused the peer): yamux then cleans up as for any closed
connection, and the close is the daemon's own, logged where it decided it.
"""

from __future__ import annotations

import logging

import libp2p  # noqa: F401  (its import is what we are undoing; make sure it has happened)
from libp2p.network.connection import swarm_connection

LIBP2P_LOGGER_NAME = "libp2p"

# (logger, message start, text the message must also hold) of py-libp2p's records about failures that
# reach our code as exceptions: a dial's upgrade (DialError), an inbound upgrade (pnet's key-mismatch
# line), a stream open (RequestError); and of yamux reading a connection we closed.
REPORTED_ELSEWHERE = (
    ("libp2p.protocol_muxer.multiselect_client", "MultiselectClient handshake: ", ""),
    ("libp2p.network.swarm", "failed to upgrade security for peer", ""),
    ("libp2p.host.basic_host", "Failed to open stream to peer", ""),
    ("libp2p.stream_muxer.yamux.yamux", "Error in handle_incoming for peer", ": ClosedResourceError: "),
)


def restore_libp2p_logging() -> None:
    """Idempotent. Keeps libp2p's WARNING level (its INFO is chatty) but lets records propagate."""
    libp2p_logger = logging.getLogger(LIBP2P_LOGGER_NAME)
    libp2p_logger.propagate = True
    # Route swarm_connection's root-level calls to a named child logger: it has the same
    # debug/info/warning/error methods, and a named logger never triggers basicConfig.
    swarm_connection.logging = logging.getLogger(swarm_connection.__name__)  # type: ignore[attr-defined, assignment]
    for logger_name, message_start, holding in REPORTED_ELSEWHERE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _ReportedElsewhere) for f in logger.filters):
            logger.addFilter(_ReportedElsewhere(message_start, holding))


class _ReportedElsewhere(logging.Filter):
    """Drops matching records, unless the logger is set to show debug records (then everything shows)."""

    def __init__(self, message_start: str, holding: str) -> None:
        super().__init__()
        self._message_start = message_start
        self._holding = holding

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if isinstance(message, str) and message.startswith(self._message_start) and self._holding in message:
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True
