"""A planted bug: a plugin component that makes its node's membership gossip a false "dead" claim about
a live member.

A component may speak only its own protocol (NodeCore checks), so the bug is planted the way a buggy
plugin sharing the process could still do it: by patching its sibling's handler. From 15 s on, the
node's membership, at its next timer, also gossips the lie; the receivers' real membership code accepts
it and marks a healthy, reachable peer dead. The membership checker must catch that as a safety
violation. (Runs on the interpreted cores: a compiled class takes no patches.)
"""

from __future__ import annotations

from typing import ClassVar

from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.membership import PROTOCOL_ID, Entry, Membership, State, codec
from pyagent.proto.ready import Ready, Send
from pyagent.proto.types import Rng

LIE_AT_US = 15_000_000
LISTENERS = 5


class Slanderer(Component):
    name: ClassVar[str] = "slanderer"

    def __init__(self, rng: Rng, membership: Membership) -> None:
        self._rng = rng
        self._lied = False
        self.membership = membership
        honest = membership.on_timer

        def on_timer(suffix: str, now_us: int, out: Ready) -> None:
            honest(suffix, now_us, out)
            if not self._lied and now_us >= LIE_AT_US:
                self._lied = True
                self._lie(out)

        membership.on_timer = on_timer  # type: ignore[method-assign]

    def _lie(self, out: Ready) -> None:
        live = [
            r
            for r in self.membership.members()
            if r.state == State.ALIVE and r.peer != self.membership.local_peer
        ]
        if len(live) < 2:
            return
        victim = self._rng.choice(live)
        lie = codec.encode_entry(Entry(victim.peer, State.DEAD, victim.incarnation, victim.meta_version))
        for listener in self._rng.sample([r for r in live if r is not victim], min(LISTENERS, len(live) - 1)):
            out.send.append(Send(listener.peer, PROTOCOL_ID, codec.gossip([lie])))


def factory(ctx: NodeContext) -> Component:
    membership = ctx.sibling("membership")
    assert isinstance(membership, Membership)
    return Slanderer(ctx.rng(Slanderer.name), membership)
