"""``NodeCore``: the one state machine per peer that composes every protocol core.

Shells call ``step(event, now_us)`` and hand the returned ``Ready`` to ``proto.interpret.Interpreter``,
which carries it out in the documented order (``ready.py``). ``step`` ends with every component's
``on_flush``; a shell that has a burst of events at hand steps them with ``flush=False`` and then calls
``flush`` once, so that deferred work (the KV store's Raft Ready) is done once for the whole burst.
The daemon drives it from one trio task with the wall clock, in bursts; simnet drives it from its event
loop with a virtual clock, one event at a time. Both run the same code.

``NodeCore`` enforces the rules of the seam, so a component's bug is caught where it happens and not as
a strange effect somewhere in a shell (TigerBeetle's "assert on both sides of a boundary"):
- ``Started`` comes first, once;
- a component sends and transfers only on its own protocol, sets only its own timers (``name/...``),
  writes only its own storage namespace, and replies only to requests it was given;
- two components may not share a name, a protocol or a command type.
Breaking a rule raises ``LocalProtocolError``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyagent.errors import LocalProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    Persisted,
    RequestCancelled,
    SendFailed,
    Started,
    TimerFired,
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferReceived,
)
from pyagent.proto.ready import CancelTransfer, Ready, Reply, Send
from pyagent.proto.types import PeerId, ProtocolId
from pyagent.proto.wire import Limits

_TRANSFER_EVENTS = (
    TransferProgress,
    TransferDone,
    TransferFailed,
    TransferChunk,
    TransferReceived,
    TransferAborted,
)


_Marks = tuple[int, int, int, int, int, int, int]
_FROM_START: _Marks = (0, 0, 0, 0, 0, 0, 0)


def _marks(out: Ready) -> _Marks:
    """How long each checked list of ``out`` is, so a broadcast can check each component's additions."""
    return (
        len(out.writes),
        len(out.send_before_persist),
        len(out.send),
        len(out.apply_before_persist),
        len(out.apply),
        len(out.timers),
        len(out.transfers),
    )


class NodeCore:
    def __init__(self, local_peer: PeerId, components: Sequence[Component]) -> None:
        self.local_peer = local_peer
        self.components = tuple(components)
        self._by_name: dict[str, Component] = {}
        self._by_protocol: dict[ProtocolId, Component] = {}
        self._by_command: dict[type, Component] = {}
        for component in self.components:
            if component.name in self._by_name:
                raise LocalProtocolError(f"two components named {component.name!r}")
            self._by_name[component.name] = component
            if component.protocol_id is not None:
                if component.protocol_id in self._by_protocol:
                    raise LocalProtocolError(f"two components speak {component.protocol_id}")
                self._by_protocol[component.protocol_id] = component
            for command_type in component.command_types:
                owner = self._by_command.get(command_type)
                if owner is not None:
                    raise LocalProtocolError(
                        f"{component.name!r} and {owner.name!r} both handle {command_type.__name__}"
                    )
                self._by_command[command_type] = component
        self._last_now_us: int | None = None
        self._started = False
        # Request id -> the component that must answer it. An entry leaves with the reply or the cancel.
        self._open_requests: dict[int, Component] = {}
        self.replies_dropped = 0  # replies to requests nobody waits for any more

    def component(self, name: str) -> Component:
        return self._by_name[name]

    @property
    def protocols(self) -> dict[ProtocolId, Limits]:
        """The wire protocols this node speaks, with the decoder limits of each."""
        return {pid: component.limits for pid, component in self._by_protocol.items()}

    def step(self, event: Event, now_us: int, *, flush: bool = True) -> Ready:
        """Feed one event, then (unless ``flush`` is false) ``flush``. Raises ``RemoteProtocolError``
        (state unchanged, nothing flushed) when a peer's message is bad, and ``LocalProtocolError`` when a
        shell or a component breaks the seam's rules."""
        out = self._handle(event, now_us)
        if flush:
            self._broadcast(out, "on_flush", now_us)
        return out

    def flush(self, now_us: int) -> Ready:
        """Every component does the work it deferred while events were stepped with ``flush=False``."""
        if not self._started:
            raise LocalProtocolError("flush before Started: feed Started first")
        self._advance(now_us)
        out = Ready()
        self._broadcast(out, "on_flush", now_us)
        return out

    def _advance(self, now_us: int) -> None:
        if self._last_now_us is not None and now_us < self._last_now_us:
            raise LocalProtocolError(f"time went backwards: {now_us} < {self._last_now_us}")
        self._last_now_us = now_us

    def _handle(self, event: Event, now_us: int) -> Ready:
        self._advance(now_us)
        if not self._started and not isinstance(event, Started):
            raise LocalProtocolError(f"{type(event).__name__} before Started: feed Started first")
        out = Ready()
        match event:
            case MessageReceived():
                component = self._owner_of_protocol(event.protocol)
                component.on_message(event, now_us, out)
            case TimerFired():
                name, _, suffix = event.key.partition("/")
                found = self._by_name.get(name)
                if found is None:
                    raise LocalProtocolError(f"timer {event.key!r} belongs to no component")
                component = found
                component.on_timer(suffix, now_us, out)
            case LocalRequest():
                handler = self._by_command.get(type(event.command))
                if handler is None:
                    raise LocalProtocolError(f"no component handles {type(event.command).__name__}")
                if event.request_id in self._open_requests:
                    raise LocalProtocolError(f"request id {event.request_id} is already open")
                self._open_requests[event.request_id] = component = handler
                component.on_request(event, now_us, out)
            case RequestCancelled():
                owner = self._open_requests.pop(event.request_id, None)
                if owner is None:
                    return out  # answered already
                component = owner
                component.on_request_cancelled(event, now_us, out)
            case Persisted():
                writer = self._by_name.get(event.component)
                if writer is None:
                    raise LocalProtocolError(f"Persisted for {event.component!r}, which is no component")
                component = writer
                component.on_persisted(event.tag, now_us, out)
            case SendFailed():
                component = self._owner_of_protocol(event.protocol)
                component.on_send_failed(event, now_us, out)
            case Started():
                if self._started:
                    raise LocalProtocolError("Started fed twice")
                self._started = True
                self._broadcast(out, "on_started", now_us, event)
                return out
            case PeerConnected():
                self._broadcast(out, "on_peer_connected", now_us, event)
                return out
            case PeerDisconnected():
                self._broadcast(out, "on_peer_disconnected", now_us, event)
                return out
            case _ if isinstance(event, _TRANSFER_EVENTS):
                component = self._owner_of_protocol(event.protocol)
                component.on_transfer(event, now_us, out)
            case _:
                raise LocalProtocolError(f"not an event: {event!r}")
        # One component handled the event, so all of the Ready is its doing.
        if not (
            out.writes
            or out.send_before_persist
            or out.send
            or out.apply_before_persist
            or out.apply
            or out.timers
            or out.transfers
        ):
            return out
        self._check(component, out, _FROM_START)
        return out

    def start(self, now_us: int, recovered: bool = False) -> Ready:
        """``step(Started(recovered), now_us)``: what every shell feeds first."""
        return self.step(Started(recovered), now_us)

    def _owner_of_protocol(self, protocol: ProtocolId) -> Component:
        component = self._by_protocol.get(protocol)
        if component is None:
            raise LocalProtocolError(f"no component speaks {protocol}")
        return component

    def _broadcast(self, out: Ready, handler: str, now_us: int, event: Event | None = None) -> None:
        """Every component runs ``handler`` (on ``event``, if one); each one's additions are checked
        against its own rights."""
        for component in self.components:
            marks = _marks(out)
            if event is None:
                getattr(component, handler)(now_us, out)
            else:
                getattr(component, handler)(event, now_us, out)
            if marks != _marks(out):
                self._check(component, out, marks)

    def _check(self, component: Component, out: Ready, marks: _Marks) -> None:
        """Check what ``component`` added to ``out`` after ``marks`` against its rights."""
        writes, early, sends, early_replies, replies, timers, transfers = marks
        name = component.name
        for batch in out.writes[writes:]:
            if batch.component != name:
                raise LocalProtocolError(f"{name!r} wrote to the storage of {batch.component!r}")
            try:
                batch.check()
            except ValueError as exc:
                raise LocalProtocolError(str(exc)) from None
        if len(out.send_before_persist) > early:
            _check_sends(component, out.send_before_persist[early:])
        if len(out.send) > sends:
            _check_sends(component, out.send[sends:])
        prefix = name + "/"
        for timer in out.timers[timers:]:
            if not timer.key.startswith(prefix):
                raise LocalProtocolError(f"{name!r} set timer {timer.key!r}, outside its own {prefix!r}")
        for transfer in out.transfers[transfers:]:
            if transfer.protocol != component.protocol_id:
                kind = "cancelled" if isinstance(transfer, CancelTransfer) else "started"
                raise LocalProtocolError(f"{name!r} {kind} a transfer on {transfer.protocol}, not its own")
        if len(out.apply_before_persist) > early_replies:
            self._check_replies(component, out.apply_before_persist, early_replies)
        if len(out.apply) > replies:
            self._check_replies(component, out.apply, replies)

    def _check_replies(self, component: Component, lane: list[Reply], first: int) -> None:
        kept = lane[:first]
        for reply in lane[first:]:
            owner = self._open_requests.get(reply.request_id)
            if owner is None:
                self.replies_dropped += 1  # cancelled or answered before: nobody waits for it
                continue
            if owner is not component:
                raise LocalProtocolError(
                    f"{component.name!r} answered request {reply.request_id}, which {owner.name!r} owns"
                )
            del self._open_requests[reply.request_id]
            kept.append(reply)
        lane[:] = kept


def _check_sends(component: Component, sends: list[Send]) -> None:
    for send in sends:
        if send.protocol != component.protocol_id:
            raise LocalProtocolError(f"{component.name!r} sent on {send.protocol}, not on its own protocol")
