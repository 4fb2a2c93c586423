"""A planted bug: a plugin component on one peer that gossips a false "dead" claim about a live member.

It speaks through the membership protocol of its own node, as a buggy plugin sharing the node could, so
the receivers' real membership code accepts the claim and marks a healthy, reachable peer dead. The
membership checker must catch that as a safety violation.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from pyagent.proto.component import Component
from pyagent.proto.events import PeerConnected
from pyagent.proto.membership import PROTOCOL_ID, Entry, Membership, State, codec
from pyagent.proto.ready import Ready, Send, SetTimer

LIE_AT_US = 15_000_000
LISTENERS = 5


class Slanderer(Component):
    name: ClassVar[str] = "slanderer"

    def __init__(self, rng: random.Random, membership: Membership) -> None:
        self._rng = rng
        self._armed = False
        self.membership = membership

    def on_peer_connected(self, event: PeerConnected, now_us: int, out: Ready) -> None:
        if not self._armed:
            self._armed = True
            out.timers.append(SetTimer(self.timer_key("lie"), LIE_AT_US))

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
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


def factory(
    peer: str, rng: random.Random, store: Mapping[str, bytes], scenario: Any, built: Mapping[str, Component]
) -> Component:
    membership = built["membership"]
    assert isinstance(membership, Membership)
    return Slanderer(rng, membership)
