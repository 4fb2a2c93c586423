"""A small in-memory mesh of ``LoraAveraging`` components for unit tests.

Transfers arrive whole (one chunk, then ``TransferReceived``), messages in order, timers by virtual time.
``kill(peer)`` stops a peer mid-transfer: each of its blobs still on the way reaches only the receivers
the test names; the others get the first bytes and then ``TransferAborted``, as when a sender dies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyagent.proto.events import (
    LocalRequest,
    MessageReceived,
    TransferAborted,
    TransferChunk,
    TransferReceived,
)
from pyagent.proto.lora import PROTOCOL, AwaitMerged, Config, Contribute, LoraAveraging, MergeResult
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import MemberRecord, State
from pyagent.proto.ready import Ready, Reply, SetTimer
from pyagent_simnet.lora_keys import SeededKeyring

ROUND_TIMEOUT_MS = 10_000


class Members:
    def __init__(self, peers: Iterable[str]) -> None:
        self.live = set(peers)

    def members(self) -> list[MemberRecord]:
        metadata = Metadata(protocols=(PROTOCOL,))
        return [MemberRecord(p, (addr_of(p),), State.ALIVE, 1, 0, 1, metadata) for p in sorted(self.live)]


def addr_of(peer: str) -> str:
    return f"/ip4/192.0.2.1/tcp/4001/p2p/{peer}"


@dataclass
class Mesh:
    peers: list[str]
    config: Config
    keyring: SeededKeyring = field(default_factory=lambda: SeededKeyring(7))
    hooks: Any = None
    now_us: int = 0
    components: dict[str, LoraAveraging] = field(default_factory=dict)
    members: dict[str, Members] = field(default_factory=dict)
    queue: deque[tuple[str, object]] = field(default_factory=deque)
    timers: dict[tuple[str, str], int] = field(default_factory=dict)
    replies: dict[int, Reply] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    next_request: int = 1
    # Applied to every blob a peer sends (a test's way to damage bytes on the wire).
    tamper: Callable[[str, bytes], bytes] | None = None
    # Messages (reports) lost on the way: every n-th one when > 0.
    lose_every: int = 0
    messages_sent: int = 0

    def __post_init__(self) -> None:
        for peer in self.peers:
            self.members[peer] = Members(self.peers)
            self.components[peer] = LoraAveraging(
                peer,
                np.random.default_rng(0),
                self.config,
                self.members[peer],
                self.keyring.identity(peer),
                hooks=self.hooks,
            )

    # --- driving

    def request(self, peer: str, command: object) -> int:
        request_id = self.next_request
        self.next_request += 1
        out = Ready()
        self.components[peer].on_request(LocalRequest(request_id, command), self.now_us, out)
        self._carry_out(peer, out)
        return request_id

    def contribute(self, peer: str, round_number: int, delta: np.ndarray, weight: float) -> Reply:
        return self.replies[self.request(peer, Contribute(round_number, delta, weight))]

    def await_merged(self, peer: str, round_number: int) -> int:
        return self.request(peer, AwaitMerged(round_number))

    def result(self, request_id: int) -> MergeResult:
        reply = self.replies[request_id]
        assert reply.error is None, reply.error
        assert isinstance(reply.value, MergeResult)
        return reply.value

    def run(self, until_us: int = 10 * ROUND_TIMEOUT_MS * 1000) -> None:
        """Deliver everything, firing timers in time order when nothing else is left."""
        while True:
            while self.queue:
                peer, event = self.queue.popleft()
                if peer not in self.dead:
                    self._feed(peer, event)
            live = {key: at for key, at in self.timers.items() if key[0] not in self.dead}
            if not live:
                return
            key, at_us = min(live.items(), key=lambda item: (item[1], item[0]))
            if at_us > until_us:
                return
            del self.timers[key]
            self.now_us = max(self.now_us, at_us)
            out = Ready()
            component = self.components[key[0]]
            component.on_timer(key[1].removeprefix(component.name + "/"), self.now_us, out)
            self._carry_out(key[0], out)

    def kill(self, peer: str, delivered_to: Iterable[str] = ()) -> None:
        """``peer`` dies now: of its blobs still queued, only those to ``delivered_to`` arrive whole."""
        self.dead.add(peer)
        keep = set(delivered_to)
        kept: deque[tuple[str, object]] = deque()
        for target, event in self.queue:
            sender = getattr(event, "peer", None)
            if sender != peer or (target in keep and not isinstance(event, MessageReceived)):
                kept.append((target, event))
            elif isinstance(event, TransferChunk):
                kept.append(
                    (target, TransferChunk(peer, PROTOCOL, event.transfer_id, 0, event.size, event.data[:1]))
                )
                kept.append((target, TransferAborted(peer, PROTOCOL, event.transfer_id, 1, "peer down")))
        self.queue = kept

    # --- effects

    def _feed(self, peer: str, event: object) -> None:
        out = Ready()
        component = self.components[peer]
        if isinstance(event, MessageReceived):
            component.on_message(event, self.now_us, out)
        else:
            component.on_transfer(event, self.now_us, out)  # type: ignore[arg-type]
        self._carry_out(peer, out)

    def _carry_out(self, peer: str, out: Ready) -> None:
        for reply in out.apply:
            self.replies[reply.request_id] = reply
        for timer in out.timers:
            assert isinstance(timer, SetTimer)
            self.timers[(peer, timer.key)] = timer.at_us
        for send in out.send:
            # Members that only heard of each other through a third are not connected yet: every send
            # and transfer must carry what the daemon needs to dial.
            assert send.addrs == (addr_of(send.peer),), send
            self.messages_sent += 1
            if self.lose_every and self.messages_sent % self.lose_every == 0:
                continue
            self.queue.append((send.peer, MessageReceived(peer, send.protocol, send.message)))
        for transfer in out.transfers:
            assert transfer.addrs == (addr_of(transfer.peer),), transfer
            data = transfer.source.read(0, transfer.source.size)
            if self.tamper is not None:
                data = self.tamper(peer, data)
            chunk = TransferChunk(peer, PROTOCOL, transfer.transfer_id, 0, len(data), data)
            self.queue.append((transfer.peer, chunk))
            self.queue.append(
                (transfer.peer, TransferReceived(peer, PROTOCOL, transfer.transfer_id, len(data), b""))
            )


def peers(count: int) -> list[str]:
    return [f"p{index:03d}" for index in range(count)]
