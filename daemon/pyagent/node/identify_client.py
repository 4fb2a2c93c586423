"""Ask a peer who it is over the standard ``/ipfs/id/1.0.0`` protocol.

py-libp2p runs identify on each new connection by itself, but keeps only addresses and protocols in
its peerstore and drops the agent version, so PeerConnected needs its own, bounded, query.
"""

from __future__ import annotations

from dataclasses import dataclass

from libp2p.abc import INetStream
from libp2p.identity.identify import identify as libp2p_identify
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL_ID
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

from pyagent import __version__
from pyagent.errors import RemoteProtocolError

# go-libp2p accepts 8 KiB (a signed peer record included); leave room for many listen addresses.
IDENTIFY_MESSAGE_BYTES_MAX = 64 * 1024
# Bounds what one peer can make us hold and forward in a PeerConnected event.
IDENTIFY_ADDRS_MAX = 64
IDENTIFY_PROTOCOLS_MAX = 256
AGENT_VERSION_CHARS_MAX = 256

PROTOCOL_ID = str(IDENTIFY_PROTOCOL_ID)

AGENT_VERSION = f"pyagent/{__version__}"


def install_agent_version() -> None:
    """Make our identify answers (and identify pushes) name this program, as ``pyagent id`` does, rather
    than ``py-libp2p/<version>``. py-libp2p builds every Identify message from its module-level
    ``AGENT_VERSION`` and takes no option for it; rebinding that one attribute is the narrowest seam
    (as in ``multistream_limit``). Idempotent; every host in the process is a pyagent host."""
    libp2p_identify.AGENT_VERSION = AGENT_VERSION


@dataclass(frozen=True, slots=True)
class IdentifyInfo:
    addrs: tuple[str, ...]
    protocols: tuple[str, ...]
    agent_version: str
    # Where the peer sees this connection coming from ("" if it did not say or it does not parse).
    observed_addr: str = ""


async def read_identify(stream: INetStream) -> IdentifyInfo:
    """Reads one varint-prefixed Identify message (the format rust, go and py-libp2p send)."""
    try:
        body = await read_varint_prefixed_bytes_limited(stream, IDENTIFY_MESSAGE_BYTES_MAX)
        message = Identify()
        message.ParseFromString(body)
    except Exception as exc:
        raise RemoteProtocolError(f"bad identify message: {exc!r}") from None
    addrs = []
    for raw in message.listen_addrs[:IDENTIFY_ADDRS_MAX]:
        try:
            addrs.append(str(Multiaddr(raw)))
        except Exception:
            continue  # one unparseable address should not hide the others
    return IdentifyInfo(
        addrs=tuple(addrs),
        protocols=tuple(message.protocols[:IDENTIFY_PROTOCOLS_MAX]),
        agent_version=message.agent_version[:AGENT_VERSION_CHARS_MAX],
        observed_addr=_multiaddr_or_empty(message.observed_addr),
    )


def _multiaddr_or_empty(raw: bytes) -> str:
    try:
        return str(Multiaddr(raw)) if raw else ""
    except Exception:
        return ""
