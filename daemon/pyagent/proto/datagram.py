"""Sealed datagrams: a protocol's small frames to a connected peer over UDP, beside its libp2p connection.

SWIM was made for datagrams. Over a TCP stream each membership frame costs a segment of IP, TCP, Noise
and yamux headers, and the kernel's pure ACK of it, which is what put an idle member above Serf's bytes
(docs/adr/0015-membership-datagrams.md). Here a frame costs its IP and UDP headers plus ``OVERHEAD_BYTES``.

A channel carries one protocol's frames one way, from the peer that set it up (the *sender*) to the
other (the *receiver*). The sender draws a random 32-byte key and a channel id of its own and hands both
to the receiver inside their Noise-secured libp2p connection (behind the private network's key, if
any); the receiver answers with a channel id of its own. So no one outside that connection can forge,
read or replay a datagram, and a private mesh's datagrams are as private as its streams.

Packet: ``kind (1) | channel (4, big-endian) | counter (4) | ChaCha20-Poly1305(payload) with its tag (16)``.
The header is the AEAD's associated data; the nonce is ``kind | 7 zero bytes | counter``, so the two
directions that share a key (``DATA`` and ``ECHO`` from the sender, ``ECHO_REPLY`` from the receiver)
never reuse one. ``channel`` is always an id the packet's *recipient* chose, so each side finds its key
with one dictionary lookup. Received counters pass a sliding replay window.

``ECHO`` and its ``ECHO_REPLY`` prove that the path works both ways before a channel carries frames, and
again whenever the shell doubts it (a suspected peer): a firewall that drops UDP must not make members
look dead, so until a path is proven the protocol's frames keep taking the stream.

This module is sans-I/O and does no clock or randomness of its own: the shell passes keys and counters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_BYTES = 32
HEADER = struct.Struct("!BII")
TAG_BYTES = 16
OVERHEAD_BYTES = HEADER.size + TAG_BYTES
# Ethernet's 1,500-byte MTU less an IPv6 header (40) and a UDP one (8): no datagram is fragmented on a
# LAN. Bigger frames take the stream.
PACKET_BYTES_MAX = 1_452
PAYLOAD_BYTES_MAX = PACKET_BYTES_MAX - OVERHEAD_BYTES
CHANNEL_MAX = 0xFFFF_FFFF
# Four bytes, not eight: every datagram carries it, and a key lives only as long as its connection. A
# path that used them all is set up again with a fresh key (node.datagrams).
COUNTER_MAX = 0xFFFF_FFFF
# How far behind the highest counter seen a late datagram may still arrive (WireGuard keeps 2,048; a
# membership channel sends a few datagrams a second, so 64 spans seconds of reordering).
REPLAY_WINDOW = 64


class Kind(IntEnum):
    DATA = 0
    ECHO = 1
    ECHO_REPLY = 2


class Rejected(Exception):
    """A packet that is not a well-formed sealed datagram for a channel we hold. It cannot be pinned on
    any peer (its sender is whoever wrote the UDP header), so the shell drops it and counts ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    channel: int
    counter: int


def seal(key: bytes, kind: Kind, channel: int, counter: int, payload: bytes) -> bytes:
    """One packet. Raises ValueError for what the recipient would reject: a payload over
    ``PAYLOAD_BYTES_MAX``, an id or counter out of range, a key of the wrong size."""
    if len(payload) > PAYLOAD_BYTES_MAX:
        raise ValueError(f"datagram payload of {len(payload)} bytes exceeds {PAYLOAD_BYTES_MAX}")
    if not 0 <= channel <= CHANNEL_MAX or not 0 <= counter <= COUNTER_MAX:
        raise ValueError(f"channel {channel} or counter {counter} out of range")
    header = HEADER.pack(kind, channel, counter)
    return header + ChaCha20Poly1305(key).encrypt(_nonce(kind, counter), payload, header)


def read_header(packet: bytes) -> Header:
    """The clear header of a packet, checked for size and kind; raises Rejected."""
    if len(packet) > PACKET_BYTES_MAX:
        raise Rejected("oversize")
    if len(packet) < OVERHEAD_BYTES:
        raise Rejected("truncated")
    kind, channel, counter = HEADER.unpack_from(packet)
    try:
        return Header(Kind(kind), channel, counter)
    except ValueError:
        raise Rejected("kind") from None


def open_sealed(key: bytes, header: Header, packet: bytes) -> bytes:
    """The payload of a packet whose header ``read_header`` gave; raises Rejected if the tag is wrong."""
    try:
        return ChaCha20Poly1305(key).decrypt(
            _nonce(header.kind, header.counter), packet[HEADER.size :], packet[: HEADER.size]
        )
    except InvalidTag:
        raise Rejected("auth") from None


def _nonce(kind: Kind, counter: int) -> bytes:
    return struct.pack("!B7xI", kind, counter)


class ReplayWindow:
    """Accepts each counter at most once, and none more than ``REPLAY_WINDOW`` behind the highest seen
    (RFC 6479's sliding window, as IPsec and WireGuard keep it). Call only after the tag checked out, so
    that a forged packet cannot move the window."""

    def __init__(self) -> None:
        self._highest = -1
        self._seen = 0  # bit i: highest - i was seen

    def accept(self, counter: int) -> bool:
        if counter > self._highest:
            shift = counter - self._highest
            self._seen = (
                ((self._seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            )
            self._highest = counter
            return True
        behind = self._highest - counter
        if behind >= REPLAY_WINDOW or self._seen >> behind & 1:
            return False
        self._seen |= 1 << behind
        return True
