"""pyagent-simnet: a deterministic discrete-event simulator that runs PyAgent's real ``NodeCore``.

For notebooks::

    from pyagent_simnet import Sim
    sim = Sim("partition-heal", seed=7, overrides=["peers=20"])
    sim.run(10.0)
    sim.crash(sim.nodes[3])
    sim.run(30.0)
"""

from pyagent_simnet.runner import Outcome, run_scenario
from pyagent_simnet.sim import Sim, SimNode

__all__ = ["Outcome", "Sim", "SimNode", "run_scenario"]
