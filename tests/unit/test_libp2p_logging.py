"""Which of py-libp2p's log records the daemon leaves out, and which it keeps."""

from __future__ import annotations

import logging

import pytest

from pyagent.node.libp2p_logging import restore_libp2p_logging

YAMUX = "libp2p.stream_muxer.yamux.yamux"


def yamux_error(message: str) -> logging.LogRecord:
    return logging.LogRecord(YAMUX, logging.ERROR, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        # The daemon closed the connection (a refused peer, say) while yamux was reading it.
        ("Error in handle_incoming for peer 12D3KooWx: ClosedResourceError: ", False),
        # Anything else yamux fails on still shows.
        ("Error in handle_incoming for peer 12D3KooWx: ValueError: bad frame", True),
        ("Some other yamux error: ClosedResourceError: ", True),
    ],
)
def test_yamux_reading_a_connection_we_closed_is_not_an_error(message: str, kept: bool) -> None:
    restore_libp2p_logging()
    assert bool(logging.getLogger(YAMUX).filter(yamux_error(message))) is kept
