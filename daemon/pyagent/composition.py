"""Builds a node's ``NodeCore``: the core's own components, then every plugin's, from one context.

The daemon and simnet both build through ``build_core``, so a plugin's component sees the same context
in both: its config table, its own generator derived from the node's seed and its name, its own storage
namespace, and its sibling components.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pluggy

from pyagent import pluginhost
from pyagent.errors import LocalProtocolError
from pyagent.proto import peers, ping
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext, component_seed
from pyagent.proto.identity import Identity
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.node import NodeCore
from pyagent.proto.storage import StorageReader
from pyagent.proto.types import PeerId

CoreFactory = Callable[[NodeContext], Component]
"""Builds one of the core's own components."""


def peer_table(ctx: NodeContext) -> Component:
    return peers.PeerTable()


def application_ping(ctx: NodeContext) -> Component:
    table = ctx.sibling(peers.PeerTable.name)
    assert isinstance(table, peers.PeerTable)
    return ping.Ping(ctx.rng(ping.Ping.name), table)


STANDARD: tuple[CoreFactory, ...] = (peer_table, application_ping)
"""The components every node runs; the daemon and simnet add membership after them."""

_NO_CONFIG: Mapping[str, Any] = {}


def build_core(
    local_peer: PeerId,
    seed: int,
    *,
    storage_for: Callable[[str], StorageReader] | None = None,
    core_factories: Sequence[CoreFactory] = STANDARD,
    plugins: pluggy.PluginManager | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    identity: Identity | None = None,
) -> NodeCore:
    """The node's core: ``core_factories`` in order, then the components of every plugin in ``plugins``.

    ``seed`` seeds every component's generator (``component_seed``). ``storage_for`` gives a component
    name's storage reader (an empty in-memory store when None, for nodes that keep nothing). ``config``
    maps a component name to its config table. ``identity`` signs for the node (``NodeContext.identity``).
    """
    tables = config or {}
    ctx = NodeContext(
        local_peer=local_peer,
        plugin_names=pluginhost.plugin_names(plugins) if plugins is not None else (),
        config_for=lambda name: tables.get(name, _NO_CONFIG),
        rng_for=lambda name: random.Random(component_seed(seed, name)),
        storage_for=storage_for or MemoryStore().reader,
        hooks=plugins.hook if plugins is not None else None,
        identity=identity,
    )
    for factory in core_factories:
        _add(ctx, factory(ctx))
    if plugins is not None:
        for component in pluginhost.collect_components(plugins, ctx):
            _add(ctx, component)
    return NodeCore(local_peer, list(ctx.built.values()))


def _add(ctx: NodeContext, component: Component) -> None:
    if component.name in ctx.built:
        raise LocalProtocolError(f"two components named {component.name!r}")
    ctx.built[component.name] = component
