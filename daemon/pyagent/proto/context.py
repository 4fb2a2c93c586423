"""``NodeContext``: everything a component is given when it is built, in the daemon and in simnet alike.

One context is made per node and handed to the core's factories and to every plugin's
``pyagent_add_components``. It hands out, per component name, that component's config table, its own
random generator and its own storage namespace, so that two components never share a generator (adding
one cannot shift another's draws) nor each other's keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyagent.errors import LocalProtocolError
from pyagent.proto.component import Component
from pyagent.proto.identity import Identity
from pyagent.proto.storage import StorageReader
from pyagent.proto.types import PeerId, Rng


def component_seed(node_seed: int, name: str) -> int:
    """The seed of component ``name``'s generator on a node seeded ``node_seed``: stable across runs,
    machines and Python versions (unlike ``hash``), and independent of which other components exist."""
    digest = hashlib.blake2b(f"{node_seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(slots=True)
class NodeContext:
    local_peer: PeerId
    # The sorted names of every plugin loaded on this node.
    plugin_names: tuple[str, ...]
    config_for: Callable[[str], Mapping[str, Any]]
    rng_for: Callable[[str], Rng]
    storage_for: Callable[[str], StorageReader]
    # Components built so far on this node, by name (the core's first, then plugins' in name order).
    built: dict[str, Component] = field(default_factory=dict)
    # The plugins' hooks that cores call (``pyagent_kv_propose``...): pluggy's hook relay, or None on a
    # node built without plugins. Only hooks documented as called by the core may be called through it.
    hooks: Any = None
    # This node's signing (``proto.identity.Identity``: the node key in the daemon, a seeded key in
    # simnet), or None on a node built without one; components that sign need it.
    identity: Identity | None = None

    def config(self, component: str) -> Mapping[str, Any]:
        """Component ``component``'s table in the node's config (``[<component>]``); empty if none."""
        return self.config_for(component)

    def rng(self, component: str) -> Rng:
        """The generator of component ``component``: the only randomness it may use."""
        return self.rng_for(component)

    def storage(self, component: str) -> StorageReader:
        """Reads of component ``component``'s storage namespace (writes go through ``Ready.writes``)."""
        return self.storage_for(component)

    def sibling(self, name: str) -> Component:
        """Another component of this node, by name.

        The core's components exist before any plugin's, so a plugin may look them up while it builds.
        Every plugin's components exist by ``Started``: look a plugin's sibling up then, not earlier."""
        try:
            return self.built[name]
        except KeyError:
            raise LocalProtocolError(
                f"no component {name!r} on this node (built so far: {', '.join(sorted(self.built))})"
            ) from None
