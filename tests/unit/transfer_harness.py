"""Two real Hosts on 127.0.0.1, each with a TransferService, and fakes of what the driver gives it: a
feedback collector (sender side) and an inbox that plays the core's owner (receiver side)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from libp2p import generate_new_ed25519_identity

from pyagent._core import blake3_chunks
from pyagent.node.host import Host, HostConfig
from pyagent.node.transfer import TransferConfig, TransferService, blob_digest
from pyagent.proto.events import (
    Event,
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferFailed,
    TransferReceived,
)

COMPONENT = "/pyagent/test-component/1.0.0"
# Generous: these tests check behaviour, not the speed of a loaded machine.
WAIT_S = 20.0


def digest_of(data: bytes, chunk_size: int) -> bytes:
    return blob_digest(blake3_chunks(data, chunk_size))


@dataclass
class Receiver:
    """The receiving core's owner: records every event and steps chunks at once (unless ``hold``)."""

    service: TransferService | None = None
    events: list[Event] = field(default_factory=list)
    blobs: dict[tuple[str, int], bytearray] = field(default_factory=dict)
    hold: trio.Event | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    # Peak of chunk bytes queued into this "core" and not yet stepped.
    queued_bytes_peak: int = 0
    # A slow core: chunks wait here until ``step_pending``.
    defer_steps: bool = False
    pending: list[TransferChunk] = field(default_factory=list)

    async def send(self, item: TransferChunk | TransferReceived | TransferAborted) -> None:
        if self.hold is not None:
            await self.hold.wait()
        self.events.append(item)
        if isinstance(item, TransferChunk):
            assert self.service is not None
            self.queued_bytes_peak = max(self.queued_bytes_peak, self.service.stats()["chunk_bytes_queued"])
            key = (item.protocol, item.transfer_id)
            if key not in self.blobs:
                self.blobs[key] = bytearray(item.size)
            blob = self.blobs[key]
            blob[item.offset : item.offset + len(item.data)] = item.data
            if self.defer_steps:
                self.pending.append(item)
            else:
                self.service.chunk_stepped(item)
        self.changed.set()
        self.changed = trio.Event()

    def step_pending(self) -> None:
        assert self.service is not None
        for chunk in self.pending:
            self.service.chunk_stepped(chunk)
        self.pending.clear()

    def chunks(self, transfer_id: int) -> list[TransferChunk]:
        return [e for e in self.events if isinstance(e, TransferChunk) and e.transfer_id == transfer_id]

    async def wait_for(self, kind: type[Event], predicate: Callable[[Event], bool] = lambda e: True) -> Event:
        with trio.fail_after(WAIT_S):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and predicate(event):
                        return event
                await self.changed.wait()


@dataclass
class Feedback:
    events: list[Event] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, kind: type[Event], predicate: Callable[[Event], bool] = lambda e: True) -> Event:
        with trio.fail_after(WAIT_S):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and predicate(event):
                        return event
                await self.changed.wait()

    async def end_of(self, transfer_id: int) -> TransferDone | TransferFailed:
        event = await self.wait_for(
            (TransferDone, TransferFailed),  # type: ignore[arg-type]
            lambda e: getattr(e, "transfer_id", None) == transfer_id,
        )
        assert isinstance(event, TransferDone | TransferFailed)
        return event


@dataclass
class Peer:
    host: Host
    service: TransferService
    receiver: Receiver
    feedback: Feedback

    @property
    def peer_id(self) -> str:
        return self.host.peer_id

    @property
    def addr(self) -> str:
        return self.host.listen_addrs()[0]


@asynccontextmanager
async def running_peer(
    config: TransferConfig | None = None,
    accepts: Callable[[str], bool] = lambda protocol: protocol == COMPONENT,
    host_config: HostConfig | None = None,
) -> AsyncIterator[Peer]:
    events_send, events_receive = trio.open_memory_channel[Event](1024)
    host = Host(generate_new_ed25519_identity(), host_config or HostConfig(), events_send)
    receiver = Receiver()
    feedback = Feedback()
    service = TransferService(host, receiver, feedback, accepts, config)
    receiver.service = service
    async with host.running(), trio.open_nursery() as nursery:

        async def drain() -> None:
            async for _event in events_receive:
                pass

        nursery.start_soon(drain)
        nursery.start_soon(service.run)
        yield Peer(host, service, receiver, feedback)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected_pair(
    sender_config: TransferConfig | None = None,
    receiver_config: TransferConfig | None = None,
    accepts: Callable[[str], bool] = lambda protocol: protocol == COMPONENT,
) -> AsyncIterator[tuple[Peer, Peer]]:
    async with running_peer(sender_config) as a, running_peer(receiver_config, accepts) as b:
        await a.host.connect(b.addr)
        yield a, b
