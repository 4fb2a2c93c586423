"""A length cap on multistream-select messages, which py-libp2p 0.8.1 reads without any limit.

Every protocol negotiation (security on the raw TCP connection, muxer, and each new stream) reads
varint-prefixed lines through ``MultiselectCommunicator.read``, which calls the module-level
``read_delim``. A peer announcing a 2 GiB "protocol name" had 6-8 MiB accepted before the upgrade
deadline hit. Rebinding that one module attribute is the narrowest seam we found: it needs no fork
and covers every negotiation, including those on streams of an established connection, which a
byte budget on the raw socket could not.
"""

from __future__ import annotations

from libp2p.exceptions import ParseError
from libp2p.io.abc import Reader
from libp2p.io.exceptions import MessageTooLarge
from libp2p.protocol_muxer import multiselect_communicator
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

# go-multistream refuses messages over 1024 bytes; protocol ids are far shorter, and we never send
# or parse the long `ls` listing.
MULTISTREAM_MESSAGE_BYTES_MAX = 1024


async def read_delim_bounded(reader: Reader) -> bytes:
    """``libp2p.utils.read_delim`` with a size cap; raises ``ParseError``, which the communicator
    already turns into a failed negotiation (the stream or connection is dropped)."""
    try:
        message = await read_varint_prefixed_bytes_limited(reader, MULTISTREAM_MESSAGE_BYTES_MAX)
    except MessageTooLarge as exc:
        raise ParseError(f"multistream-select message too long: {exc}") from None
    if not message.endswith(b"\n"):
        raise ParseError("multistream-select message is not newline-terminated")
    return message[:-1]


def install() -> None:
    """Idempotent: every host in the process shares the one patched module."""
    multiselect_communicator.read_delim = read_delim_bounded  # type: ignore[attr-defined]
