"""Which protocol components a simulated node runs, and how each is built, started and observed.

A ``Kit`` knows one feature: the components to put into a fresh ``NodeCore`` (given the node, whose
durable store lets a restart resume from what was persisted), what to do when a node starts (join a
mesh), and the observer that measures and checks it. Scenarios name kits in ``components``; tests and
users add their own with ``extra_components = ["module:factory"]``.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyagent.errors import ConfigError
from pyagent.proto import peers, ping
from pyagent.proto.component import Component
from pyagent.proto.types import PeerId

if TYPE_CHECKING:
    from pyagent_simnet.scenario import Scenario
    from pyagent_simnet.sim import Sim, SimNode

# factory(peer, rng, durable_store, scenario, built) -> Component, where ``built`` maps the names of the
# components already made for this node to them, so a plugin component can work with its siblings.
Factory = Callable[[PeerId, random.Random, Mapping[str, bytes], "Scenario", dict[str, Component]], Component]


class Kit:
    name = ""

    def build(
        self, sim: Sim, node: SimNode, rng: random.Random, built: dict[str, Component]
    ) -> list[Component]:
        raise NotImplementedError

    def notice_sources(self, built: dict[str, Component]) -> list[Callable[[], list[Any]]]:
        """Callables the simulator drains after each step for notices (for example state changes)."""
        return []

    def on_start(self, sim: Sim, node: SimNode) -> None:
        """A node has just been created or restarted."""

    def on_leave(self, sim: Sim, node: SimNode) -> int:
        """A node is about to leave for good: say goodbye, and return how long (us) to keep running."""
        return 0

    def observer(self, sim: Sim) -> Any:
        return None


class PingKit(Kit):
    """The daemon's standard composition: the peer table and application ping."""

    name = "ping"

    def build(
        self, sim: Sim, node: SimNode, rng: random.Random, built: dict[str, Component]
    ) -> list[Component]:
        table = peers.PeerTable()
        return [table, ping.Ping(rng, table)]


AVAILABLE: dict[str, Kit] = {"ping": PingKit()}

MEMBERSHIP_PRESETS_FALLBACK = ("lan", "wan", "local")


def available_names() -> list[str]:
    return sorted(AVAILABLE)


def presets() -> tuple[str, ...]:
    kit = AVAILABLE.get("membership")
    return tuple(kit.presets()) if kit is not None else MEMBERSHIP_PRESETS_FALLBACK  # type: ignore[attr-defined]


def check_membership(preset: str, overrides: Mapping[str, Any], source: str) -> None:
    kit = AVAILABLE["membership"]
    kit.check(preset, overrides, source)  # type: ignore[attr-defined]


def load_extra(spec: str, source: str) -> Factory:
    """``module:callable`` -> the callable; it returns one Component for a node."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"{source}: extra_components: {spec!r} must look like 'module:factory'")
    try:
        factory: Factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{source}: extra_components: cannot load {spec!r}: {exc}") from None
    return factory


def _register_membership() -> None:
    try:
        from pyagent.proto.membership import Membership  # noqa: F401 - probing whether it is there
    except ImportError:
        return  # no membership component in this pyagent; ping-only scenarios still run
    from pyagent_simnet import membership_kit

    AVAILABLE["membership"] = membership_kit.MembershipKit()


_register_membership()
