"""A test-only component that sends blobs with ``Transfer`` effects and records every transfer event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.events import LocalRequest, TransferChunk, TransferEvent
from pyagent.proto.ready import CancelTransfer, Ready, Reply, Transfer

PROTOCOL_ID = "/pyagent-test/blobs/1.0.0"


@dataclass(frozen=True, slots=True)
class SendBlob:
    peer: str
    transfer_id: int
    source: object  # a BlobSource
    offset: int = 0


@dataclass(frozen=True, slots=True)
class CancelBlob:
    transfer_id: int


@dataclass
class CountingSource:
    """A ``BlobSource`` that remembers every read, so a test can see it was read chunk by chunk."""

    data: bytes
    reads: list[tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


class Blobs(Component):
    name: ClassVar[str] = "blobs"
    protocol_id: ClassVar[str] = PROTOCOL_ID
    command_types: ClassVar[tuple[type, ...]] = (SendBlob, CancelBlob)

    def __init__(self) -> None:
        self.events: list[tuple[int, TransferEvent]] = []
        # (peer, transfer id) -> the bytes received so far, at their offsets.
        self.received: dict[tuple[str, int], bytearray] = {}

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        command = request.command
        if isinstance(command, SendBlob):
            out.transfers.append(
                Transfer(command.peer, PROTOCOL_ID, command.transfer_id, command.source, command.offset)  # type: ignore[arg-type]
            )
        else:
            assert isinstance(command, CancelBlob)
            out.transfers.append(CancelTransfer(PROTOCOL_ID, command.transfer_id))
        out.apply.append(Reply(request.request_id))

    def on_transfer(self, event: TransferEvent, now_us: int, out: Ready) -> None:
        self.events.append((now_us, event))
        if isinstance(event, TransferChunk):
            blob = self.received.setdefault((event.peer, event.transfer_id), bytearray())
            assert len(blob) >= event.offset, "a chunk arrived after a gap"
            blob[event.offset : event.offset + len(event.data)] = event.data

    def of(self, kind: type) -> list[TransferEvent]:
        return [event for _, event in self.events if isinstance(event, kind)]


def factory(ctx: NodeContext) -> Component:
    return Blobs()
