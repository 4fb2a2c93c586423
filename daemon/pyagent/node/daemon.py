"""``pyagent daemon``: wires identity, config, plugins, the libp2p host, NodeCore and the control API.

Start-up order matters: configuration, identity and plugins load (and fail) before anything listens; the
control socket is bound first so that a second daemon on the same home fails before touching the network;
the host listens before the control API serves, so a client that can reach the API can reach the node.
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

from pyagent import __version__, bootstraplist, identity, pluginhost
from pyagent.composition import STANDARD, build_core
from pyagent.config import (
    CONTROL_SOCKET,
    IDENTITY_FILE,
    Config,
    check_component_tables,
    flood_limits,
    membership_config,
)
from pyagent.errors import ConfigError
from pyagent.hookspecs import ControlMethod
from pyagent.node import kvapi, mesh, signing
from pyagent.node.control import (
    ControlServer,
    InvalidParams,
    Method,
    MethodError,
    PeerUnreachable,
    PeerUnsupported,
    open_listener,
)
from pyagent.node.dialer import Dialer
from pyagent.node.driver import (
    FEEDBACK_MAX,
    INBOX_CAPACITY,
    REQUEST_TIMEOUT_S,
    Driver,
    DueTimer,
    RequestFailed,
    now_us,
)
from pyagent.node.host import STANDARD_PING_PROTOCOL_ID, DialError, Host, HostConfig, RequestError
from pyagent.node.host_config import FloodLimits
from pyagent.node.inbox import Inbox
from pyagent.node.metrics import DaemonMetrics, Metrics, NodeCollector, stats_view
from pyagent.node.storage import StorageHandle
from pyagent.node.transfer import TransferService
from pyagent.proto import addresses, kv, membership
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.events import Event, MessageReceived, PeerConnected, PeerDisconnected
from pyagent.proto.membership import limits as membership_limits
from pyagent.proto.node import NodeCore
from pyagent.proto.peers import ListPeers, PeerInfo
from pyagent.proto.ping import PROTOCOL_ID as PING_PROTOCOL_ID
from pyagent.proto.ping import PingPeer
from pyagent.proto.wire import Message

log = logging.getLogger("pyagent.daemon")

# At shutdown, how long answers still being written (the one to `pyagent leave`, say) may take.
CONTROL_ANSWERS_GRACE_S = 1.0
# After announcing a leave, stay up this many gossip intervals so that the news spreads.
LEAVE_LINGER_GOSSIP_INTERVALS = 5
# `pyagent ping` prefers our own ping (it measures the path every PyAgent protocol takes) and falls back
# to libp2p's standard one, which every libp2p peer serves.
PING_PROTOCOLS = (PING_PROTOCOL_ID, STANDARD_PING_PROTOCOL_ID)


class Node:
    """What plugins and control methods see of a running daemon (``hookspecs.NodeHandle``)."""

    def __init__(
        self,
        home: Path,
        key_pair: KeyPair,
        host: Host,
        dialer: Dialer,
        core: NodeCore,
        driver: Driver,
        plugins: pluggy.PluginManager,
        members: membership.Membership,
        storage: StorageHandle,
        transfers: TransferService,
    ) -> None:
        self.home = home
        self.peer_id = identity.peer_id_of(key_pair)
        self.host = host
        self.dialer = dialer
        self.core = core
        self.driver = driver
        self.plugins = plugins
        self.members = members
        self.storage = storage
        self.transfers = transfers
        # Set by a signal or by `pyagent leave`; the daemon then leaves the mesh and stops.
        self.stop = trio.Event()
        self._left = False
        # The one metrics registry (node/metrics.py): /metrics, `pyagent stats` and plugins share it.
        self.metrics = Metrics()
        self.daemon_metrics = DaemonMetrics(self.metrics, membership.PROTOCOL_ID, members.config.members_max)
        self.metrics.register(NodeCollector(self, self.metrics))
        self.metrics_url: str | None = None
        self._addrs_cut_logged: tuple[int, int] | None = None

    def peers(self) -> list[PeerInfo]:
        table = self.core.component("peers")
        assert hasattr(table, "snapshot")
        snapshot: list[PeerInfo] = table.snapshot()
        return snapshot

    async def connect(self, addr: str) -> str:
        return await self.host.connect(addr)

    async def request(self, command: object, timeout_s: float = REQUEST_TIMEOUT_S) -> object:
        return await self.driver.request(command, timeout_s)

    def send(self, peer: str, protocol_id: str, message: Message) -> None:
        self.dialer.send(peer, protocol_id, message)

    def local_metadata(self) -> membership.Metadata:
        record = self.members.member(self.peer_id)
        assert record is not None, "the local node is always a member of its own table"
        return record.metadata

    def addrs_to_gossip(self) -> tuple[str, ...]:
        """What the host announces, cut to what membership gossips per member."""
        announced = self.host.announced_addrs()
        fitted = addresses.fit(announced, membership_limits.ADDRS_MAX, self.members.config.addrs_bytes_max)
        cut = (len(fitted), len(announced))
        if len(fitted) < len(announced) and cut != self._addrs_cut_logged:
            # Once per change, not at every refresh.
            self._addrs_cut_logged = cut
            log.warning(
                "gossiping %d of %d addresses (membership's addrs_bytes_max is %d bytes); list the ones "
                "others need in [node] announce, or hide the rest with [node] no_announce",
                len(fitted),
                len(announced),
                self.members.config.addrs_bytes_max,
            )
        return tuple(fitted)

    def local_addrs(self) -> tuple[str, ...]:
        record = self.members.member(self.peer_id)
        assert record is not None, "the local node is always a member of its own table"
        return record.addrs

    async def leave(self) -> None:
        """Tell the mesh this node is leaving (state "left", not "dead") and let the news spread."""
        if self._left:
            return
        self._left = True
        told = await self.request(membership.Leave())
        self.dialer.stop_dialing()
        # Once left, this node no longer counts itself live: with no live member left there is no one
        # to spread the news to, and lingering would only delay every lone daemon's stop by a second.
        others = self.members.live_count()
        linger_s = (
            LEAVE_LINGER_GOSSIP_INTERVALS * self.members.config.gossip_interval_ms / 1000 if others else 0.0
        )
        log.info("left the mesh", extra={"told": told, "linger_s": linger_s})
        await trio.sleep(linger_s)

    def after_step(self, event: Event) -> None:
        """Runs after the core has taken each event: bookkeeping and plugin notifications."""
        if isinstance(event, MessageReceived):
            self.dialer.touch(event.peer)
            self.daemon_metrics.heard(event.peer, event.protocol, now_us())
        elif isinstance(event, PeerConnected):
            info = next((p for p in self.peers() if p.peer == event.peer), None)
            mismatch = None if info is None else mesh.version_mismatch(info)
            if mismatch is not None and self.host.accepted_from(event.peer):
                # The dialer says why in its own join log; this side counts it and hangs up, so that
                # an operator on either side sees the reason (issue 15).
                self.host.refuse(event.peer, "version-mismatch", mismatch)
            elif info is not None:
                self.plugins.hook.pyagent_peer_connected(node=self, peer=info)
        elif isinstance(event, PeerDisconnected):
            self.plugins.hook.pyagent_peer_disconnected(node=self, peer=event.peer)

    def on_notice(self, notice: object) -> None:
        """Every notice of a Ready: logged when it is a membership change, then shown to plugins."""
        if isinstance(notice, membership.MemberChanged):
            mesh.log_change(notice)
            self.daemon_metrics.member_changed(notice, now_us())
            if notice.new_state in (membership.State.DEAD, membership.State.LEFT):
                self.dialer.drop(notice.peer)
            elif notice.new_state is membership.State.SUSPECT:
                self.host.doubt_datagrams(notice.peer)
        elif isinstance(notice, membership.Isolated):
            mesh.log_isolation(notice)
        self.plugins.hook.pyagent_notice(node=self, notice=notice)

    # Control methods. Each takes the request's params and returns something JSON can carry.

    async def api_id(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": self.host.announced_addrs(),
            "listen_addrs": self.host.listen_addrs(),
            "running": True,
            "agent_version": f"pyagent/{__version__}",
            "protocols": sorted(self.core.protocols),
            "metrics_url": self.metrics_url,
        }

    async def api_peers(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        peers = await self.request(ListPeers())
        assert isinstance(peers, list)
        views = []
        for info in peers:
            view = asdict(info)
            # Membership's probes time every member again and again, so their smoothed RTT is fresher
            # than the last `pyagent ping`, which is kept for peers that are not members.
            record = self.members.member(info.peer)
            if record is not None and record.rtt_us is not None:
                view["rtt_us"] = record.rtt_us
            views.append(view)
        return views

    async def api_members(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        records = await self.request(membership.ListMembers())
        assert isinstance(records, list)
        now = now_us()
        return [mesh.member_view(record, now) for record in records]

    async def api_isolation(self, params: dict[str, Any]) -> dict[str, Any]:
        """Whether this node has run alone long enough to warn its operator (``pyagent members``)."""
        since_us = self.members.alone_since_us()
        if since_us is None:
            return {"alone_s": None, "warning": None}
        now = now_us()
        return {"alone_s": round((now - since_us) / 1e6, 1), "warning": mesh.isolation_warning(since_us, now)}

    async def api_join(self, params: dict[str, Any]) -> dict[str, Any]:
        """Join the mesh of the members at ``addrs`` at runtime; when this node is in a mesh already,
        the two meshes merge (every member of each learns every member of the other)."""
        addrs = params.get("addrs")
        if not isinstance(addrs, list) or not addrs or not all(isinstance(addr, str) for addr in addrs):
            raise InvalidParams("parameter 'addrs' must be a non-empty list of multiaddrs")
        try:
            seeds = mesh.seeds_of(addrs, "join")
        except ConfigError as exc:
            raise InvalidParams(str(exc)) from None
        if self.peer_id in seeds:
            raise InvalidParams(
                f"join: {self.peer_id} is this node itself; give the address of a member of the mesh to join"
            )
        try:
            joined = await mesh.join_once(self, seeds)
        except mesh.JoinFailed as exc:
            raise MethodError(f"join: {exc}") from None
        log.info("joined at runtime", extra={"seed": joined.seed, "members": joined.members})
        return {"seed": joined.seed, "members": joined.members}

    async def api_leave(self, params: dict[str, Any]) -> dict[str, Any]:
        await self.leave()
        self.stop.set()
        return {"peer_id": self.peer_id}

    async def api_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"peer_id": await self._dial(_string_param(params, "addr"), "connect")}

    async def _dial(self, addr: str, command: str) -> str:
        try:
            bootstraplist.check_multiaddr(addr, command)
        except ConfigError as exc:
            raise InvalidParams(str(exc)) from None
        try:
            return await self.host.connect(addr)
        except DialError as exc:
            raise PeerUnreachable(str(exc)) from None

    async def api_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        target = _string_param(params, "peer")
        peer = target
        if target.startswith("/"):
            peer = await self._dial(target, "ping")
        else:
            try:
                bootstraplist.check_peer_id(peer, "ping")
            except ConfigError as exc:
                raise InvalidParams(
                    f"{exc}; give a peer id (12D3...) or a multiaddr ending in /p2p/<peer id>"
                ) from None
            if peer not in self.host.connected_peers():
                await self._connect_member(peer)
        protocol = await self._ping_protocol(peer)
        try:
            if protocol == PING_PROTOCOL_ID:
                rtt_us = await self.request(PingPeer(peer))
            else:
                rtt_us = round(await self.host.libp2p_ping(peer) * 1_000_000)
        except (RequestFailed, RequestError) as exc:
            raise MethodError(f"ping {peer}: {exc}") from None
        return {"peer_id": peer, "rtt_us": rtt_us, "protocol": protocol}

    async def _ping_protocol(self, peer: str) -> str:
        """Our own ping where the peer speaks it, else libp2p's standard one (any libp2p peer, such as
        rust-libp2p or kubo, answers it). Identify's list answers without a round trip; until identify
        has run, multistream-select asks the peer."""
        peers = await self.request(ListPeers())
        assert isinstance(peers, list)
        announced = next((info.protocols for info in peers if info.peer == peer), ())
        for protocol in PING_PROTOCOLS:
            if protocol in announced:
                return protocol
        try:
            return await self.host.first_supported(peer, PING_PROTOCOLS)
        except RequestError as exc:
            if exc.reason == "refused":
                raise PeerUnsupported(
                    f"ping {peer}: it speaks neither {' nor '.join(PING_PROTOCOLS)}"
                ) from None
            raise MethodError(f"ping {peer}: {exc}") from None

    async def _connect_member(self, peer: str) -> None:
        """Dial a member at the addresses gossip gave for it."""
        record = self.members.member(peer)
        if record is None or not record.addrs:
            raise PeerUnreachable(
                f"{peer} is neither connected nor a known member; give its multiaddr instead of its id"
            )
        errors = []
        for addr in record.addrs:
            try:
                await self.host.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
                return
            except DialError as exc:
                errors.append(str(exc))
        raise PeerUnreachable("; ".join(errors))

    async def api_plugins(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [asdict(info) for info in pluginhost.describe_plugins(self.plugins)]

    async def api_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        # The metrics registry, as /metrics serves it: the two can never disagree.
        return stats_view(self.metrics.registry)

    def control_methods(self) -> dict[str, Method]:
        own: dict[str, Method] = {
            "id": self.api_id,
            "peers": self.api_peers,
            "members": self.api_members,
            "isolation": self.api_isolation,
            "join": self.api_join,
            "leave": self.api_leave,
            "connect": self.api_connect,
            "ping": self.api_ping,
            "plugins": self.api_plugins,
            "stats": self.api_stats,
            **kvapi.kv_methods(self.request),
        }
        for name, method in pluginhost.control_methods(self.plugins, own).items():
            own[name] = _bind(method, self)
        return own


async def serve_metrics(
    listen: str, metrics: Metrics, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve /metrics on ``listen``; reports its URL once bound (a ``ConfigError`` if it cannot bind)."""
    from pyagent.node import metrics_http

    listeners = await metrics_http.open_listeners(listen)
    url = metrics_http.url_of(listeners[0].socket.getsockname())
    log.info("serving metrics", extra={"url": url})
    task_status.started(url)
    await metrics_http.serve(listeners, metrics.registry)


def _bind(method: ControlMethod, node: Node) -> Method:
    async def call(params: dict[str, Any]) -> Any:
        return await method(node, params)

    return call


def _string_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"parameter {name!r} must be a non-empty string")
    return value


def host_config(config: Config, psk: bytes | None) -> HostConfig:
    return HostConfig(
        listen_addrs=list(config.node.listen),
        announce=list(config.node.announce),
        no_announce=list(config.node.no_announce),
        dial_timeout_ms=config.host.dial_timeout_ms,
        upgrade_timeout_ms=config.host.upgrade_timeout_ms,
        open_stream_timeout_ms=config.host.open_stream_timeout_ms,
        connections_max=config.host.connections_max,
        datagrams=config.host.datagrams,
        flood_limits=flood_limits(config.host, FloodLimits),
        psk=psk,
        allow_list=frozenset(config.mesh.allow_list) if config.mesh.allow_list else None,
    )


def load_psk(home: Path, config: Config) -> bytes | None:
    if not config.mesh.swarm_key_file:
        return None
    from pyagent.node import pnet

    return pnet.load_swarm_key(home / config.mesh.swarm_key_file)


def bootstrap_addrs(home: Path, config: Config) -> list[str]:
    """Every bootstrap address, each checked (``ConfigError``) before the daemon says it is ready."""
    addrs = list(config.node.bootstrap)
    for addr in addrs:
        bootstraplist.check_multiaddr(addr, "bootstrap")
    if config.node.bootstrap_file:
        addrs += bootstraplist.load(home / config.node.bootstrap_file)
    return addrs


async def _handle_signals(stop: trio.Event) -> None:
    """The first SIGINT/SIGTERM starts a graceful shutdown. The receiver stays open until the daemon has
    stopped, so a repeated signal cannot kill it halfway through leaving the mesh."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                log.info("already shutting down", extra={"signal": name})
            else:
                log.info("shutting down", extra={"signal": name})
                stop.set()


def open_storage(home: Path) -> StorageHandle:
    try:
        return StorageHandle(home)
    except OSError as exc:
        raise ConfigError(
            f"cannot open the node's storage in {home}: {exc}; check the directory's permissions and "
            "free space, or move a damaged store aside"
        ) from None


def build_node_core(
    key_pair: KeyPair, config: Config, plugins: pluggy.PluginManager, storage: StorageHandle
) -> NodeCore:
    """The daemon's core: the standard components, membership with this config, then the plugins'."""
    peer_id = identity.peer_id_of(key_pair)
    allowed = frozenset(config.mesh.allow_list) | {peer_id} if config.mesh.allow_list else None

    def gossip_membership(ctx: NodeContext) -> Component:
        name = membership.Membership.name
        return membership.Membership(
            ctx.local_peer,
            ctx.rng(name),
            membership_config(config.membership),
            allowed=allowed,
            storage=ctx.storage(name),
        )

    def sharded_kv(ctx: NodeContext) -> Component:
        members = ctx.sibling(membership.Membership.name)
        assert isinstance(members, membership.Membership)
        try:
            kv_config = kv.Config.from_table(dict(ctx.config(kv.NAME)))
        except ValueError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
        storage = ctx.storage(kv.NAME)
        return kv.RaftKv(ctx.local_peer, ctx.rng(kv.NAME), kv_config, storage, members, hooks=ctx.hooks)

    # The OS seeds the node once; each component's generator is derived from it and its name.
    seed = int.from_bytes(os.urandom(8), "big")
    core = build_core(
        peer_id,
        seed,
        storage_for=storage.reader,
        core_factories=(*STANDARD, gossip_membership, sharded_kv),
        plugins=plugins,
        config=config.components,
        identity=signing.NodeSigner(key_pair),
    )
    # A table no component claims is a typo ([nod], [helo]); disabled plugins' tables are fine.
    check_component_tables(
        config, [c.name for c in core.components] + sorted(pluginhost.installed_plugin_names())
    )
    return core


def load_plugins(config: Config) -> pluggy.PluginManager:
    """The daemon's plugins: ``[plugins] disabled`` and ``$PYAGENT_PLUGINS_DISABLED`` are never imported;
    a plugin that fails to load is logged once and skipped, unless ``[plugins] required`` names it."""
    disabled = [*config.plugins.disabled, *pluginhost.disabled_from_env()]
    plugins = pluginhost.load_plugins(disabled, config.plugins.required)
    for failure in plugins.failures:
        log.warning(str(failure))
    return plugins


async def run(home: Path, config: Config) -> None:
    """Run until SIGINT, SIGTERM or ``pyagent leave``; ``ConfigError`` for what the operator must fix."""
    key_pair = identity.load(home / IDENTITY_FILE)
    psk = load_psk(home, config)
    seeds = bootstrap_addrs(home, config)
    plugins = load_plugins(config)
    peer_id = identity.peer_id_of(key_pair)
    # The control socket first: a second daemon on this home must fail on it, before the store (which
    # it would find locked) and before the network.
    control_listener = await open_listener(home / CONTROL_SOCKET)
    storage = open_storage(home)
    core = build_node_core(key_pair, config, plugins, storage)
    members = core.component(membership.Membership.name)
    assert isinstance(members, membership.Membership)
    # The shell's own randomness (join backoff jitter); the cores never see it.
    rng = random.Random(os.urandom(32))
    inbox: Inbox[Event | DueTimer] = Inbox(INBOX_CAPACITY, FEEDBACK_MAX)
    host = Host(key_pair, host_config(config, psk), inbox)
    for protocol_id, limits in core.protocols.items():
        host.register_protocol(protocol_id, limits, datagrams=protocol_id == membership.PROTOCOL_ID)
    # Gossip relays a member's addresses to hosts it never met: loopback ones only reach peers on ours.
    host.set_remote_view(membership.PROTOCOL_ID, membership.codec.for_another_host)

    async with host.running(), trio.open_nursery() as nursery:
        dialer = Dialer(host)
        dialer.attach(nursery)
        transfers = TransferService(
            host, inbox, inbox.send_feedback, lambda protocol: protocol in core.protocols
        )
        driver = Driver(core, dialer, storage, inbox, transfers)
        dialer.on_send_failed = driver.feedback
        node = Node(home, key_pair, host, dialer, core, driver, plugins, members, storage, transfers)
        driver.on_event = node.after_step
        driver.on_notice = node.on_notice
        nursery.start_soon(transfers.run)
        nursery.start_soon(driver.run)
        await driver.started.wait()
        metadata = mesh.local_metadata(
            home,
            config.node.hardware_tags,
            config.node.features,
            pluginhost.plugin_names(plugins),
            list(core.protocols),
            pluginhost.collect_metadata(plugins),
        )
        await node.request(membership.UpdateLocalMetadata(metadata, node.addrs_to_gossip()))
        plugins.hook.pyagent_add_metrics(metrics=node.metrics, node=node)
        if config.metrics.listen:
            node.metrics_url = await nursery.start(serve_metrics, config.metrics.listen, node.metrics)
        methods = node.daemon_metrics.timed(node.control_methods())
        control = ControlServer(home / CONTROL_SOCKET, control_listener, methods)
        nursery.start_soon(control.serve)
        plugins.hook.pyagent_startup(node=node, nursery=nursery)
        log.info(
            "daemon ready",
            extra={"peer_id": peer_id, "addrs": ",".join(host.announced_addrs()), "private": psk is not None},
        )
        nursery.start_soon(_handle_signals, node.stop)
        async with trio.open_nursery() as upkeep:
            upkeep.start_soon(mesh.join_mesh, node, seeds, rng, lambda: node.request(kv.FoundShards()))
            upkeep.start_soon(mesh.refresh_load, node.request, node.local_metadata, members.live_count)
            upkeep.start_soon(mesh.refresh_addrs, node.request, node.addrs_to_gossip, node.local_addrs)
            await node.stop.wait()
            # These tasks speak for this node to the mesh; once it has left, the core refuses them with
            # "left", so they end before the leave rather than race it.
            upkeep.cancel_scope.cancel()
        await node.leave()
        with trio.move_on_after(CONTROL_ANSWERS_GRACE_S):
            await control.answers_written()
        plugins.hook.pyagent_shutdown(node=node)
        nursery.cancel_scope.cancel()
    storage.close()
    log.info("daemon stopped")
