"""Connection events reach only the peers whose components react to them; the rest never pay for them."""

from __future__ import annotations

from pyagent.proto.events import Event, MessageReceived, PeerConnected, PeerDisconnected
from pyagent_simnet import Sim
from pyagent_simnet.sim import SimNode

SCENARIO = {
    "name": "connections",
    "peers": 6,
    "duration_s": 5.0,
    "components": ["membership"],
    "checks": {"liveness": False},
}


def test_a_mesh_that_ignores_connections_is_not_told_of_them_but_they_are_tracked() -> None:
    sim = Sim(SCENARIO, seed=1)
    seen: list[type] = []
    step = sim._step

    def spy(node: SimNode, event: Event) -> None:
        seen.append(type(event))
        step(node, event)

    sim._step = spy  # type: ignore[method-assign]
    sim.run(4.0)
    sim.crash(sim.nodes[0])
    sim.run(5.0)
    assert MessageReceived in seen
    assert PeerConnected not in seen and PeerDisconnected not in seen
    assert all(node.connected for node in sim.nodes[1:])
    assert not sim.nodes[0].connected
