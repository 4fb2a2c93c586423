"""``NodeCore``: the one state machine per peer that composes every protocol core.

Shells call ``step(event, now_us)`` and carry out the returned ``Ready`` (see ``ready.py`` for the order).
The daemon drives it from trio with the wall clock; simnet drives it from its event loop with a virtual
clock. Both therefore run exactly the same protocol code.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyagent.errors import LocalProtocolError
from pyagent.proto import peers, ping
from pyagent.proto.component import Component
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    TimerFired,
)
from pyagent.proto.ready import Ready
from pyagent.proto.types import PeerId, ProtocolId, Rng
from pyagent.proto.wire import Limits


class NodeCore:
    def __init__(self, local_peer: PeerId, rng: Rng, components: Sequence[Component]) -> None:
        self.local_peer = local_peer
        self.rng = rng
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
                self._by_command[command_type] = component
        self._last_now_us: int | None = None

    @classmethod
    def standard(cls, local_peer: PeerId, rng: Rng, extra: Sequence[Component] = ()) -> NodeCore:
        """The composition the daemon and simnet ship with, plus components that plugins add."""
        table = peers.PeerTable()
        return cls(local_peer, rng, [table, ping.Ping(rng, table), *extra])

    def component(self, name: str) -> Component:
        return self._by_name[name]

    @property
    def protocols(self) -> dict[ProtocolId, Limits]:
        """The wire protocols this node speaks, with the decoder limits of each."""
        return {pid: component.limits for pid, component in self._by_protocol.items()}

    def step(self, event: Event, now_us: int) -> Ready:
        """Feed one event. Raises ``RemoteProtocolError`` (state unchanged) when a peer's message is bad."""
        if self._last_now_us is not None and now_us < self._last_now_us:
            raise LocalProtocolError(f"time went backwards: {now_us} < {self._last_now_us}")
        self._last_now_us = now_us
        out = Ready()
        match event:
            case MessageReceived():
                component = self._by_protocol.get(event.protocol)
                if component is None:
                    raise LocalProtocolError(f"no component speaks {event.protocol}")
                component.on_message(event, now_us, out)
            case TimerFired():
                name, _, suffix = event.key.partition("/")
                if name not in self._by_name:
                    raise LocalProtocolError(f"timer {event.key!r} belongs to no component")
                self._by_name[name].on_timer(suffix, now_us, out)
            case LocalRequest():
                handler = self._by_command.get(type(event.command))
                if handler is None:
                    raise LocalProtocolError(f"no component handles {type(event.command).__name__}")
                handler.on_request(event, now_us, out)
            case PeerConnected():
                for component in self.components:
                    component.on_peer_connected(event, now_us, out)
            case PeerDisconnected():
                for component in self.components:
                    component.on_peer_disconnected(event, now_us, out)
        return out
