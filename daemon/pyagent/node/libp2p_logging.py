"""Undo what importing py-libp2p 0.8.1 does to the process's logging configuration.

On import, ``libp2p.utils.logging.setup_logging`` clears the ``libp2p`` logger's handlers and sets
``propagate = False`` (unless ``LIBP2P_DEBUG`` is set), so its warnings never reach the handlers the
daemon configures. And ``swarm_connection`` logs through the module-level ``logging.warning()``
functions, which log on the root logger and, if the root has no handler yet, silently run
``logging.basicConfig()``; a later ``basicConfig`` by the daemon then does nothing.
"""

from __future__ import annotations

import logging

import libp2p  # noqa: F401  (its import is what we are undoing; make sure it has happened)
from libp2p.network.connection import swarm_connection

LIBP2P_LOGGER_NAME = "libp2p"


def restore_libp2p_logging() -> None:
    """Idempotent. Keeps libp2p's WARNING level (its INFO is chatty) but lets records propagate."""
    libp2p_logger = logging.getLogger(LIBP2P_LOGGER_NAME)
    libp2p_logger.propagate = True
    # Route swarm_connection's root-level calls to a named child logger: it has the same
    # debug/info/warning/error methods, and a named logger never triggers basicConfig.
    swarm_connection.logging = logging.getLogger(swarm_connection.__name__)  # type: ignore[attr-defined, assignment]
