"""The seam's own rules: NodeCore's ownership checks, Started first, and the Interpreter's order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from pyagent.errors import LocalProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, Persisted, RequestCancelled, TimerFired
from pyagent.proto.interpret import Interpreter
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import BytesSource, CancelTransfer, Ready, Reply, Send, Transfer
from pyagent.proto.storage import Put, WriteBatch


@dataclass(frozen=True)
class Do:
    """A command that makes the test component put ``effects`` into its Ready."""

    effects: Ready


@dataclass(frozen=True)
class Other:
    pass


class Scripted(Component):
    """Adds whatever the command asks for, so each test can try one kind of effect."""

    name: ClassVar[str] = "scripted"
    protocol_id: ClassVar[str] = "/pyagent/scripted/1.0.0"
    command_types: ClassVar[tuple[type, ...]] = (Do,)

    def __init__(self) -> None:
        self.persisted: list[int] = []
        self.cancelled: list[int] = []

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        assert isinstance(request.command, Do)
        effects = request.command.effects
        lanes = ("writes", "send_before_persist", "send", "apply_before_persist", "apply", "notices")
        for name in (*lanes, "timers", "transfers"):
            getattr(out, name).extend(getattr(effects, name))

    def on_persisted(self, tag: int, now_us: int, out: Ready) -> None:
        self.persisted.append(tag)

    def on_request_cancelled(self, event: RequestCancelled, now_us: int, out: Ready) -> None:
        self.cancelled.append(event.request_id)


class Bystander(Component):
    name: ClassVar[str] = "bystander"
    protocol_id: ClassVar[str] = "/pyagent/bystander/1.0.0"
    command_types: ClassVar[tuple[type, ...]] = (Other,)


def started_core() -> tuple[NodeCore, Scripted]:
    scripted = Scripted()
    core = NodeCore("me", [scripted, Bystander()])
    core.start(0)
    return core, scripted


def send(protocol: str = Scripted.protocol_id) -> Send:
    return Send("peer", protocol, {"v": 1, "t": "x"})


def test_events_before_started_are_refused() -> None:
    core = NodeCore("me", [Scripted()])
    with pytest.raises(LocalProtocolError, match="before Started"):
        core.step(TimerFired("scripted/x"), 0)
    core.start(0)
    with pytest.raises(LocalProtocolError, match="twice"):
        core.start(1)


@pytest.mark.parametrize(
    ("effects", "complaint"),
    [
        (Ready(send=[send(Bystander.protocol_id)]), "not on its own protocol"),
        (Ready(send_before_persist=[send("/pyagent/other/1.0.0")]), "not on its own protocol"),
        (Ready(timers=[]), None),
        (Ready(writes=[WriteBatch("bystander", (Put(b"k", b"v"),))]), "wrote to the storage of"),
        (Ready(writes=[WriteBatch("scripted", ())]), "empty write batch"),
        (Ready(transfers=[Transfer("p", Bystander.protocol_id, 1, BytesSource(b"x"))]), "not its own"),
        (Ready(transfers=[CancelTransfer(Bystander.protocol_id, 1)]), "not its own"),
    ],
)
def test_a_component_may_only_touch_what_it_owns(effects: Ready, complaint: str | None) -> None:
    core, _ = started_core()
    if complaint is None:
        core.step(LocalRequest(1, Do(effects)), 1)
        return
    with pytest.raises(LocalProtocolError, match=complaint):
        core.step(LocalRequest(1, Do(effects)), 1)


def test_timers_outside_the_components_prefix_are_refused() -> None:
    from pyagent.proto.ready import SetTimer

    core, _ = started_core()
    with pytest.raises(LocalProtocolError, match="outside its own"):
        core.step(LocalRequest(1, Do(Ready(timers=[SetTimer("bystander/x", 5)]))), 1)


@pytest.mark.parametrize("lane", ["apply", "apply_before_persist"])
def test_a_reply_to_another_components_request_is_refused(lane: str) -> None:
    core, _ = started_core()
    core.step(LocalRequest(1, Other()), 1)  # open, owned by the bystander
    with pytest.raises(LocalProtocolError, match="which 'bystander' owns"):
        core.step(LocalRequest(2, Do(Ready(**{lane: [Reply(1, value="stolen")]}))), 2)


def test_a_reply_after_the_request_was_cancelled_is_dropped_and_the_owner_told() -> None:
    core, scripted = started_core()
    core.step(LocalRequest(1, Do(Ready())), 1)
    core.step(RequestCancelled(1, "client went away"), 2)
    assert scripted.cancelled == [1]
    late = core.step(LocalRequest(2, Do(Ready(apply=[Reply(1, value="late"), Reply(2, value="ok")]))), 3)
    assert late.apply == [Reply(2, value="ok")] and core.replies_dropped == 1
    early = core.step(LocalRequest(3, Do(Ready(apply_before_persist=[Reply(1), Reply(3)]))), 4)
    assert early.apply_before_persist == [Reply(3)] and core.replies_dropped == 2


def test_duplicate_command_types_are_refused_at_build() -> None:
    class Twin(Bystander):
        name: ClassVar[str] = "twin"
        protocol_id: ClassVar[str] = "/pyagent/twin/1.0.0"

    with pytest.raises(LocalProtocolError, match="both handle Other"):
        NodeCore("me", [Bystander(), Twin()])


def test_persisted_reaches_the_component_that_wrote() -> None:
    core, scripted = started_core()
    core.step(Persisted("scripted", 7), 1)
    assert scripted.persisted == [7]
    with pytest.raises(LocalProtocolError, match="no component"):
        core.step(Persisted("nobody", 1), 2)


@dataclass
class RecordingSink:
    log: list[tuple[str, object]] = field(default_factory=list)

    def write(self, batch: WriteBatch) -> None:
        self.log.append(("write", batch.tag))

    def send(self, send: Send) -> None:
        self.log.append(("send", send.message["t"]))

    def reply(self, reply: Reply) -> None:
        self.log.append(("reply", reply.request_id))

    def notice(self, notice: object) -> None:
        self.log.append(("notice", notice))

    def set_timer(self, key: str, at_us: int) -> None:
        self.log.append(("timer", key))

    def cancel_timer(self, key: str) -> None:
        self.log.append(("cancel", key))

    def transfer(self, transfer: Transfer) -> None:
        self.log.append(("transfer", transfer.transfer_id))

    def cancel_transfer(self, cancel: CancelTransfer) -> None:
        self.log.append(("cancel-transfer", cancel.transfer_id))


def message(kind: str) -> Send:
    return Send("peer", "/p", {"v": 1, "t": kind})


def test_dependent_effects_wait_for_their_writes_and_early_sends_do_not() -> None:
    sink = RecordingSink()
    interpreter = Interpreter(sink)
    interpreter.carry_out(
        Ready(
            writes=[WriteBatch("c", (Put(b"k", b"v"),), tag=1)],
            send_before_persist=[message("append")],
            send=[message("vote")],
            apply_before_persist=[Reply(2)],
            apply=[Reply(1)],
            notices=["changed"],
        )
    )
    assert sink.log == [("write", 1), ("send", "append"), ("reply", 2), ("notice", "changed")]
    assert interpreter.held_effects == 2
    interpreter.persisted()
    assert sink.log[4:] == [("send", "vote"), ("reply", 1)] and interpreter.held_effects == 0


def test_a_later_ready_without_writes_still_waits_behind_an_earlier_one() -> None:
    # A reply that reads what an earlier Ready wrote must not overtake that write.
    sink = RecordingSink()
    interpreter = Interpreter(sink)
    interpreter.carry_out(Ready(writes=[WriteBatch("c", (Put(b"k", b"v"),), tag=1)], apply=[Reply(1)]))
    interpreter.carry_out(Ready(apply=[Reply(2)]))
    interpreter.carry_out(Ready(writes=[WriteBatch("c", (Put(b"k", b"w"),), tag=2)], apply=[Reply(3)]))
    assert [entry for entry in sink.log if entry[0] == "reply"] == []
    interpreter.persisted()
    assert [entry for entry in sink.log if entry[0] == "reply"] == [("reply", 1), ("reply", 2)]
    interpreter.persisted()
    assert sink.log[-1] == ("reply", 3)


def test_more_persisted_than_written_is_a_bug() -> None:
    interpreter = Interpreter(RecordingSink())
    with pytest.raises(LocalProtocolError):
        interpreter.persisted()
