"""The peer table: who we are connected to, what identify said about them, and their latest RTT."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, PeerConnected, PeerDisconnected
from pyagent.proto.ready import Ready, Reply
from pyagent.proto.types import PeerId


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer: PeerId
    addrs: tuple[str, ...]
    protocols: tuple[str, ...]
    agent_version: str
    connected_since_us: int
    rtt_us: int | None = None


@dataclass(frozen=True, slots=True)
class ListPeers:
    """Local command: answer with a list of ``PeerInfo`` sorted by peer id."""


@dataclass(slots=True)
class Config:
    # Above the shell's connection cap, so that the bound is never what limits a healthy node.
    peers_max: int = 1024


class PeerTable(Component):
    name: ClassVar[str] = "peers"
    command_types: ClassVar[tuple[type, ...]] = (ListPeers,)

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._peers: dict[PeerId, PeerInfo] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer: PeerId) -> PeerInfo | None:
        return self._peers.get(peer)

    def snapshot(self) -> list[PeerInfo]:
        return [self._peers[p] for p in sorted(self._peers)]

    def record_rtt(self, peer: PeerId, rtt_us: int) -> None:
        info = self._peers.get(peer)
        if info is not None:
            self._peers[peer] = replace(info, rtt_us=rtt_us)

    def on_peer_connected(self, event: PeerConnected, now_us: int, out: Ready) -> None:
        previous = self._peers.get(event.peer)
        if previous is None and len(self._peers) >= self.config.peers_max:
            # Full: forget the peer connected longest ago rather than refuse fresh information.
            oldest = min(self._peers.values(), key=lambda info: info.connected_since_us)
            del self._peers[oldest.peer]
        self._peers[event.peer] = PeerInfo(
            peer=event.peer,
            addrs=event.addrs,
            protocols=event.protocols,
            agent_version=event.agent_version,
            connected_since_us=previous.connected_since_us if previous else now_us,
            rtt_us=previous.rtt_us if previous else None,
        )

    def on_peer_disconnected(self, event: PeerDisconnected, now_us: int, out: Ready) -> None:
        self._peers.pop(event.peer, None)

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        out.apply.append(Reply(request.request_id, value=self.snapshot()))
