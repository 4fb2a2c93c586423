"""A test-only component that sends numbered frames, so tests can see order, loss and duplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pyagent.errors import RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.events import LocalRequest, MessageReceived
from pyagent.proto.ready import Ready, Send
from pyagent.proto.wire import Limits

PROTOCOL_ID = "/pyagent-test/numbered/1.0.0"


@dataclass(frozen=True, slots=True)
class SendNumbered:
    peer: str
    number: int


class Numbered(Component):
    name: ClassVar[str] = "numbered"
    protocol_id: ClassVar[str] = PROTOCOL_ID
    limits: ClassVar[Limits] = Limits(frame_size_bytes_max=256, depth_max=2, count_max=16)
    command_types: ClassVar[tuple[type, ...]] = (SendNumbered,)

    def __init__(self) -> None:
        self.received: list[int] = []

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        assert isinstance(request.command, SendNumbered)
        out.send.append(
            Send(request.command.peer, PROTOCOL_ID, {"v": 1, "t": "n", "i": request.command.number})
        )

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        number = event.message.get("i")
        if event.message["t"] != "n" or not isinstance(number, int) or isinstance(number, bool):
            raise RemoteProtocolError("numbered frame without an integer 'i'")
        self.received.append(number)


def factory(ctx: NodeContext) -> Component:
    return Numbered()
