"""``pyagent daemon``: wires identity, config, plugins, the libp2p host, NodeCore and the control API.

Start-up order matters: plugins load (and fail) before anything listens; the host listens before the
control socket exists, so a client that can reach the control API can also reach the node.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pluggy
import trio
from libp2p.crypto.keys import KeyPair

from pyagent import __version__, identity, pluginhost
from pyagent.config import CONTROL_SOCKET, IDENTITY_FILE, Config
from pyagent.hookspecs import ControlMethod
from pyagent.node.control import ControlServer, Method, MethodError, open_listener
from pyagent.node.driver import Driver, RequestFailed
from pyagent.node.host import DialError, Host, HostConfig
from pyagent.proto.events import Event, PeerConnected, PeerDisconnected
from pyagent.proto.node import NodeCore
from pyagent.proto.peers import ListPeers, PeerInfo
from pyagent.proto.ping import PingPeer
from pyagent.proto.wire import Message

log = logging.getLogger("pyagent.daemon")

EVENTS_QUEUE_MAX = 4096
BOOTSTRAP_CONCURRENCY_MAX = 8


class Node:
    """What plugins and control methods see of a running daemon (``hookspecs.NodeHandle``)."""

    def __init__(
        self,
        home: Path,
        key_pair: KeyPair,
        host: Host,
        core: NodeCore,
        driver: Driver,
        plugins: pluggy.PluginManager,
    ) -> None:
        self.home = home
        self.peer_id = identity.peer_id_of(key_pair)
        self.host = host
        self.core = core
        self.driver = driver
        self.plugins = plugins

    def peers(self) -> list[PeerInfo]:
        table = self.core.component("peers")
        assert hasattr(table, "snapshot")
        snapshot: list[PeerInfo] = table.snapshot()
        return snapshot

    async def request(self, command: object) -> object:
        return await self.driver.request(command)

    def send(self, peer: str, protocol_id: str, message: Message) -> None:
        self.host.send(peer, protocol_id, message)

    def notify_plugins(self, event: Event) -> None:
        if isinstance(event, PeerConnected):
            info = next((p for p in self.peers() if p.peer == event.peer), None)
            if info is not None:
                self.plugins.hook.pyagent_peer_connected(node=self, peer=info)
        elif isinstance(event, PeerDisconnected):
            self.plugins.hook.pyagent_peer_disconnected(node=self, peer=event.peer)

    # Control methods. Each takes the request's params and returns something JSON can carry.

    async def api_id(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": self.host.listen_addrs(),
            "agent_version": f"pyagent/{__version__}",
            "protocols": sorted(self.core.protocols),
        }

    async def api_peers(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        peers = await self.request(ListPeers())
        assert isinstance(peers, list)
        return [asdict(info) for info in peers]

    async def api_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        addr = _string_param(params, "addr")
        try:
            peer = await self.host.connect(addr)
        except DialError as exc:
            raise MethodError(str(exc)) from None
        return {"peer_id": peer}

    async def api_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        target = _string_param(params, "peer")
        peer = target
        if target.startswith("/"):
            peer = (await self.api_connect({"addr": target}))["peer_id"]
        elif peer not in self.host.connected_peers():
            raise MethodError(f"not connected to {peer}; connect first with `pyagent connect <multiaddr>`")
        try:
            rtt_us = await self.request(PingPeer(peer))
        except RequestFailed as exc:
            raise MethodError(f"ping {peer}: {exc}") from None
        return {"peer_id": peer, "rtt_us": rtt_us}

    async def api_plugins(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [asdict(info) for info in pluginhost.describe_plugins(self.plugins)]

    async def api_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.host.stats(), "core_remote_errors": self.driver.remote_errors}

    def control_methods(self) -> dict[str, Method]:
        own: dict[str, Method] = {
            "id": self.api_id,
            "peers": self.api_peers,
            "connect": self.api_connect,
            "ping": self.api_ping,
            "plugins": self.api_plugins,
            "stats": self.api_stats,
        }
        for name, method in pluginhost.control_methods(self.plugins, own).items():
            own[name] = _bind(method, self)
        return own


def _bind(method: ControlMethod, node: Node) -> Method:
    async def call(params: dict[str, Any]) -> Any:
        return await method(node, params)

    return call


def _string_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise MethodError(f"parameter {name!r} must be a non-empty string")
    return value


def host_config(config: Config, psk: bytes | None) -> HostConfig:
    return HostConfig(
        listen_addrs=list(config.node.listen),
        dial_timeout_ms=config.host.dial_timeout_ms,
        upgrade_timeout_ms=config.host.upgrade_timeout_ms,
        open_stream_timeout_ms=config.host.open_stream_timeout_ms,
        connections_max=config.host.connections_max,
        psk=psk,
    )


def load_psk(home: Path, config: Config) -> bytes | None:
    if not config.mesh.swarm_key_file:
        return None
    from pyagent.node import pnet

    return pnet.load_swarm_key(home / config.mesh.swarm_key_file)


async def _bootstrap(node: Node, addrs: list[str]) -> None:
    limiter = trio.CapacityLimiter(BOOTSTRAP_CONCURRENCY_MAX)

    async def dial(addr: str) -> None:
        async with limiter:
            try:
                peer = await node.host.connect(addr)
            except DialError as exc:
                log.warning("bootstrap dial failed: %s", exc)
            else:
                log.info("bootstrap connected", extra={"peer": peer})

    async with trio.open_nursery() as nursery:
        for addr in addrs:
            nursery.start_soon(dial, addr)


async def run(home: Path, config: Config) -> None:
    """Run until SIGINT or SIGTERM. Raises ``ConfigError`` for problems the operator must fix."""
    key_pair = identity.load(home / IDENTITY_FILE)
    psk = load_psk(home, config)
    plugins = pluginhost.load_plugins(config.plugins.disabled)
    peer_id = identity.peer_id_of(key_pair)
    # The daemon's randomness is seeded from the OS once; the cores only ever see this generator.
    rng = random.Random(os.urandom(32))
    extra = pluginhost.collect_components(plugins, peer_id, rng)
    core = NodeCore.standard(peer_id, rng, extra)
    events_in, events_out = trio.open_memory_channel[Event](EVENTS_QUEUE_MAX)
    host = Host(key_pair, host_config(config, psk), events_in)
    for protocol_id, limits in core.protocols.items():
        host.register_protocol(protocol_id, limits)

    control_listener = await open_listener(home / CONTROL_SOCKET)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with host.running(), trio.open_nursery() as nursery:
            driver = Driver(core, host, events_out)
            node = Node(home, key_pair, host, core, driver, plugins)
            driver.on_event = node.notify_plugins
            nursery.start_soon(driver.run)
            control = ControlServer(home / CONTROL_SOCKET, control_listener, node.control_methods())
            nursery.start_soon(control.serve)
            plugins.hook.pyagent_startup(node=node, nursery=nursery)
            log.info(
                "daemon ready",
                extra={
                    "peer_id": peer_id,
                    "addrs": ",".join(host.listen_addrs()),
                    "private": psk is not None,
                },
            )
            if config.node.bootstrap:
                nursery.start_soon(_bootstrap, node, list(config.node.bootstrap))
            async for signum in signals:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                break
            plugins.hook.pyagent_shutdown(node=node)
            nursery.cancel_scope.cancel()
    log.info("daemon stopped")
