"""The daemon's libp2p host: py-libp2p 0.8.1 behind an interface that cannot take the process down.

What it adds to py-libp2p (each reason is in docs/adr/0003-libp2p-host.md): safe construction
(``libp2p_factory``), a cap on multistream-select messages (``multistream_limit``), logging that reaches
the daemon's handlers (``libp2p_logging``), deadlines on dial, upgrade and stream open, framed messages
on registered protocols (``inbound``, ``outbound``), request/response (``request_response``), identify
results as events (``presence``), and a shutdown that frees the port and leaves no task behind.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache, partial

import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.host.exceptions import StreamFailure
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.host.ping import PING_LENGTH
from libp2p.io.exceptions import IOException
from libp2p.io.utils import read_exactly
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.stream.net_stream import NetStream
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.rcmgr import Direction
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr
from multiaddr.protocols import P_P2P

from pyagent.errors import ConfigError, RemoteProtocolError
from pyagent.node import multistream_limit
from pyagent.node.counters import Counters
from pyagent.node.datagrams import COUNTER_NAMES as DATAGRAM_COUNTER_NAMES
from pyagent.node.datagrams import SETUP_LIMITS as DATAGRAM_SETUP_LIMITS
from pyagent.node.datagrams import SETUP_PROTOCOL as DATAGRAM_SETUP_PROTOCOL
from pyagent.node.datagrams import DatagramPaths, ip_of
from pyagent.node.dial_errors import DialError, classify, detail_of, nothing_listens
from pyagent.node.host_config import HostConfig, is_allowed
from pyagent.node.identify_client import PROTOCOL_ID as IDENTIFY_PROTOCOL_ID
from pyagent.node.identify_client import install_agent_version, read_identify
from pyagent.node.inbound import InboundStreams, message_handler
from pyagent.node.inbox import EventSender
from pyagent.node.interfaces import announced_addrs, interface_ips
from pyagent.node.libp2p_factory import StreamHandler, build_libp2p_host
from pyagent.node.libp2p_logging import restore_libp2p_logging
from pyagent.node.limits import COUNTER_NAMES as FLOOD_COUNTER_NAMES
from pyagent.node.limits import FloodGuards
from pyagent.node.outbound import OutboundQueues
from pyagent.node.presence import PeerPresence
from pyagent.node.request_response import RequestError, RequestHandler, request, request_handler
from pyagent.node.streams import finish_stream
from pyagent.proto import addresses
from pyagent.proto.events import Event, PeerConnected
from pyagent.proto.wire import DEFAULT_LIMITS, Limits, Message, encode_frame

__all__ = ["DialError", "Host", "HostConfig", "RequestError"]

logger = logging.getLogger(__name__)

COUNTER_NAMES = (
    "frames_in",
    "bytes_in",
    "frames_out",
    "bytes_out",
    "send_dropped_overflow",
    "send_dropped_not_connected",
    "send_dropped_error",
    "send_stream_errors",
    "protocol_errors",
    "handler_errors",
    "requests_out",
    "requests_in",
    "request_errors",
    "request_handler_timeouts",
    "dials",
    "dial_errors",
    # Each finished dial once, labelled with its outcome: "ok" or the DialError reason (metrics).
    "dial_outcomes",
    "connections_refused",
    "streams_refused",
    *FLOOD_COUNTER_NAMES,
    *DATAGRAM_COUNTER_NAMES,
)

# A shutdown that cannot finish in this time has a bug; it must still not hang the daemon forever.
CLOSE_TIMEOUT_S = 10.0

STANDARD_PING_PROTOCOL_ID = str(PING_PROTOCOL_ID)


class Host:
    def __init__(self, key_pair: KeyPair, config: HostConfig, events: EventSender[Event]) -> None:
        restore_libp2p_logging()
        multistream_limit.install()
        install_agent_version()
        self._config = config
        self._events = events
        self._counters = Counters(COUNTER_NAMES)
        self._guards = FloodGuards(config.flood_limits, self._counters.add, self._disconnect_soon)
        self._no_announce = addresses.NoAnnounce.parse(config.no_announce)
        self._observed = addresses.ObservedAddrs()
        # Per protocol, the message as a peer on another host may receive it (`set_remote_view`); and
        # per connected peer, whether its connection comes from this machine.
        self._remote_views: dict[str, Callable[[Message], Message]] = {}
        self._same_host: dict[str, bool] = {}
        self._libp2p = build_libp2p_host(
            key_pair,
            config,
            lambda: self._counters.add("handler_errors"),
            lambda: self._counters.add("streams_refused"),
            lambda: self._counters.add("connections_refused", label="key-mismatch"),
            lambda peer: self._note_refusal(peer, "allow-list", "not on the allow-list"),
            self._guards,
            self._identify_addrs,
        )
        swarm = self._libp2p.get_network()
        assert isinstance(swarm, Swarm)
        self._swarm = swarm
        self._limits: dict[str, Limits] = {}
        self._inbound = InboundStreams()
        self._nursery: trio.Nursery | None = None
        self._dial_locks: dict[str, trio.Lock] = {}
        self._outbound = OutboundQueues(self._open_stream, config.send_queue_frames_max, self._counters)
        self._presence = PeerPresence(
            events, self._identify, self._known_info, config.identify_timeout_ms / 1000
        )
        swarm.register_notifee(_ConnectionNotifee(self._peer_connected, self._peer_disconnected))
        self._datagrams: DatagramPaths | None = None
        if config.datagrams:
            self._datagrams = DatagramPaths(events, self._counters, self.request, self._remote_ip)
            self.register_request_handler(
                DATAGRAM_SETUP_PROTOCOL, DATAGRAM_SETUP_LIMITS, self._datagrams.handle_open
            )

    @property
    def peer_id(self) -> str:
        return str(self._libp2p.get_id())

    @property
    def libp2p_host(self) -> BasicHost:
        """The wrapped py-libp2p host, for interop probes and tests. Handlers set on it directly are
        still guarded (an exception costs only its stream), but nothing else here applies to them."""
        return self._libp2p

    def listen_addrs(self) -> list[str]:
        """The addresses the listeners are bound to (``0.0.0.0`` stays as is; port 0 is resolved)."""
        suffix = f"/p2p/{self.peer_id}"
        return [f"{a}{suffix}" for a in self._libp2p.get_transport_addrs()]

    def announced_addrs(self) -> list[str]:
        """What peers are told to dial, by identify and by membership gossip: ``announce`` if set, else
        the bound addresses with 0.0.0.0 and :: expanded into the interface addresses plus observed
        addresses that peers confirmed; without ``no_announce``'s, and without loopback unless loopback
        is all there is (``addresses.for_remote_peers``)."""
        suffix = f"/p2p/{self.peer_id}"
        return [f"{addr}{suffix}" for addr in self._announced(self._libp2p.get_transport_addrs())]

    def _announced(self, bound: list[Multiaddr]) -> list[str]:
        return announced_addrs(
            [str(addr) for addr in bound],
            self._config.announce,
            self._no_announce,
            self._observed.confirmed(),
        )

    def _identify_addrs(self, bound: list[Multiaddr]) -> list[Multiaddr]:
        # Called by py-libp2p (with the bound addresses) for every identify answer, and once while
        # the host is built, before self._libp2p exists.
        return [Multiaddr(addr) for addr in self._announced(bound)]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Host]:
        """Listens; on exit closes every connection and listener, and ends every task it started."""
        listen = [_parse_listen_addr(addr) for addr in self._config.listen_addrs]
        async with self._libp2p.run(listen_addrs=listen):
            try:
                self._check_listening()
                async with trio.open_nursery() as nursery:
                    self._outbound.attach(nursery)
                    self._presence.attach(nursery)
                    self._nursery = nursery
                    if self._datagrams is not None:
                        self._datagrams.start(nursery, self._bound_ip_ports())
                    try:
                        yield self
                    finally:
                        self._nursery = None
                        self._presence.attach(None)
                        if self._datagrams is not None:
                            self._datagrams.close()
                        nursery.cancel_scope.cancel()
            finally:
                # Closing inside run() is what stops the listener: leaving run() alone keeps the
                # port accepting. Shielded so that a cancelled daemon still frees its port.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT_S):
                    await self._libp2p.close()

    def _check_listening(self) -> None:
        """Every listen address must be ours alone: a daemon that runs on part of its addresses, or
        shares a port with another, is reached by peers that meant someone else."""
        for addr in self._config.listen_addrs:
            key = str(_parse_listen_addr(addr))  # as the swarm and the listener spell it
            if key not in self._swarm.listeners:
                reason = self._guards.listeners.listen_errors.get(key, "no transport accepted it")
                hint = ""
                if reason == os.strerror(errno.EADDRINUSE):
                    hint = "; another program holds that port: stop it, or pick another port in [node] listen"
                raise ConfigError(f"cannot listen on {addr}: {reason.lower()}{hint}")

    def register_protocol(self, protocol_id: str, limits: Limits, *, datagrams: bool = False) -> None:
        """Inbound frames on ``protocol_id`` become MessageReceived events; outbound ones obey ``limits``.
        With ``datagrams``, `send` puts a frame that fits in a datagram on the peer's UDP path once that
        is proven (``node.datagrams``): for protocols made for loss and reordering, as SWIM is."""
        self._limits[protocol_id] = limits
        if datagrams and self._datagrams is not None:
            self._datagrams.carry(protocol_id, limits)
        handler = message_handler(
            protocol_id,
            limits,
            self._events,
            self._counters,
            self._config.read_chunk_size_bytes,
            self._inbound,
        )
        self._libp2p.set_stream_handler(TProtocol(protocol_id), handler)

    def set_remote_view(self, protocol_id: str, view: Callable[[Message], Message]) -> None:
        """Messages `send` sends on ``protocol_id`` to a peer on another host go through ``view`` first
        (membership's ``codec.for_another_host`` leaves loopback addresses out). A peer is on this host
        when its connection comes from a loopback address or one of this machine's own."""
        self._remote_views[protocol_id] = view

    def register_request_handler(self, protocol_id: str, limits: Limits, handler: RequestHandler) -> None:
        self._limits[protocol_id] = limits
        stream_handler = request_handler(
            protocol_id,
            limits,
            handler,
            self._config.request_handler_timeout_ms / 1000,
            self._counters,
            self._config.read_chunk_size_bytes,
        )
        self._libp2p.set_stream_handler(TProtocol(protocol_id), stream_handler)

    def register_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """A protocol that owns its streams (bulk transfer): ``handler`` reads, writes and sets its own
        deadlines. What escapes it costs only that stream: a peer's bad bytes (``RemoteProtocolError``,
        counted in ``protocol_errors``), a broken stream, or a bug (``handler_errors``, logged)."""
        self._libp2p.set_stream_handler(
            TProtocol(protocol_id), _contained(protocol_id, handler, self._counters)
        )

    async def open_stream(self, peer: str, protocol_id: str) -> NetStream:
        """A fresh stream to a connected peer, negotiated within ``open_stream_timeout_ms``; raises
        RequestError (``not-connected``, ``timeout``, ``refused``: the peer does not speak it, ``stream``)."""
        return await self._open_stream(peer, protocol_id)

    async def connect(self, maddr: str) -> str:
        """Dials ``maddr`` (which must end with /p2p/<peer-id>) unless already connected; returns the
        peer id. The whole dial, upgrade included, is bounded by ``dial_timeout_ms``."""
        address, peer_id = _parse_dial_addr(maddr)
        peer = str(peer_id)
        if peer_id == self._libp2p.get_id():
            raise ValueError(f"refusing to dial this host's own peer id: {maddr}")
        if not is_allowed(self._config, peer):
            raise DialError("refused", maddr, "the peer is not on this node's allow-list")
        lock = self._dial_locks.setdefault(peer, trio.Lock())
        try:
            async with lock:
                if self._is_connected(peer_id):
                    return peer
                await self._dial(maddr, address, peer_id)
                return peer
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._dial_locks.pop(peer, None)

    def reset_inbound(self, peer: str, protocol_id: str) -> None:
        """Resets the peer's inbound streams on ``protocol_id``: what a message that the protocol core
        rejected costs its sender. The peer's next `send` opens a fresh stream."""
        if self._nursery is None:
            return
        for stream in self._inbound.take(peer, protocol_id):
            self._nursery.start_soon(partial(finish_stream, stream, reset=True))
        if self._datagrams is not None:
            self._datagrams.drop_inbound(peer, protocol_id)

    def doubt_datagrams(self, peer: str) -> None:
        """The peer may be out of reach (membership suspects it): its frames take streams until an echo
        proves its UDP path again, so that a path that stopped carrying datagrams cannot keep it suspect."""
        if self._datagrams is not None:
            self._datagrams.doubt(peer)

    async def disconnect(self, peer: str) -> None:
        await self._swarm.close_peer(_peer_id(peer))

    def _disconnect_soon(self, peer: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.disconnect, peer)

    def connected_peers(self) -> list[str]:
        return [str(peer_id) for peer_id, conns in self._swarm.connections.items() if conns]

    def send(self, peer: str, protocol_id: str, message: Message) -> None:
        """Best effort, never blocks: queued for the peer's long-lived stream on this protocol, or
        dropped (and counted) when the peer is not connected or its queue is full."""
        view = self._remote_views.get(protocol_id)
        if view is not None and not self._same_host.get(peer, False):
            message = view(message)
        frame = encode_frame(message, self._limits.get(protocol_id, DEFAULT_LIMITS))
        if not self._is_connected(_peer_id(peer)):
            self._counters.add("send_dropped_not_connected")
            return
        if self._datagrams is not None and self._datagrams.send(peer, protocol_id, frame):
            self._counters.add("frames_out", label=protocol_id)
            self._counters.add("bytes_out", len(frame), label=protocol_id)
            return
        self._outbound.enqueue(peer, protocol_id, frame)

    async def send_with_backpressure(self, peer: str, protocol_id: str, message: Message) -> None:
        """For bulk transfers: like `send` on the same stream, but waits while the queue is full (the
        peer reads slowly) instead of dropping. Raises RequestError if the peer is not connected or
        the stream failed meanwhile."""
        frame = encode_frame(message, self._limits.get(protocol_id, DEFAULT_LIMITS))
        if not self._is_connected(_peer_id(peer)):
            raise RequestError("not-connected", peer, protocol_id)
        try:
            await self._outbound.enqueue_waiting(peer, protocol_id, frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RequestError("stream", peer, protocol_id, "the send stream failed") from None

    async def request(self, peer: str, protocol_id: str, message: Message, timeout_ms: int) -> Message:
        """One request, one response, within ``timeout_ms``; raises RequestError."""
        return await request(
            self._open_stream,
            peer,
            protocol_id,
            message,
            self._limits.get(protocol_id, DEFAULT_LIMITS),
            timeout_ms / 1000,
            self._counters,
            self._config.read_chunk_size_bytes,
        )

    async def first_supported(self, peer: str, protocols: Sequence[str]) -> str:
        """The first of ``protocols`` that the connected peer speaks, asked by multistream-select on a
        stream closed at once; raises RequestError (``refused`` when it speaks none of them)."""
        stream = await self._open_stream(peer, *protocols)
        with trio.CancelScope(shield=True):
            await stream.close()
        return str(stream.get_protocol())

    async def libp2p_ping(self, peer: str) -> float:
        """Round-trip time in seconds over the standard ``/ipfs/ping/1.0.0``; raises RequestError."""
        payload = os.urandom(PING_LENGTH)
        stream = await self._open_stream(peer, STANDARD_PING_PROTOCOL_ID)
        try:
            with trio.fail_after(self._config.open_stream_timeout_ms / 1000):
                start = trio.current_time()
                await stream.write(payload)
                echo = await read_exactly(stream, PING_LENGTH)
                rtt_s = trio.current_time() - start
        except trio.TooSlowError:
            raise RequestError("timeout", peer, STANDARD_PING_PROTOCOL_ID) from None
        except Exception as exc:
            raise RequestError("stream", peer, STANDARD_PING_PROTOCOL_ID, repr(exc)) from None
        finally:
            with trio.CancelScope(shield=True):
                await stream.close()
        if echo != payload:
            raise RequestError("protocol", peer, STANDARD_PING_PROTOCOL_ID, "echo differs from the payload")
        return rtt_s

    @property
    def counters(self) -> Counters:
        """Every named counter of the host; ``node/metrics.py`` exports each one, whatever its name."""
        return self._counters

    def open_streams(self) -> int:
        """Streams open now over every connection, for the metrics."""
        return sum(len(conn.get_streams()) for conns in self._swarm.connections.values() for conn in conns)

    def open_connections(self) -> int:
        return sum(len(conns) for conns in self._swarm.connections.values())

    def stats(self) -> dict[str, int]:
        snapshot = self._counters.snapshot()
        snapshot["connected_peers"] = len(self.connected_peers())
        return snapshot

    async def _dial(self, maddr: str, address: Multiaddr, peer_id: ID) -> None:
        self._counters.add("dials")
        try:
            with trio.fail_after(self._config.dial_timeout_ms / 1000):
                await self._swarm.dial_addr(address, peer_id)
        except trio.TooSlowError:
            self._counters.add("dial_errors")
            self._counters.add("dial_outcomes", label="timeout")
            detail = f"no connection within {self._config.dial_timeout_ms} ms"
            raise DialError("timeout", maddr, detail) from None
        except Exception as exc:
            reason = classify(exc)
            self._counters.add("dial_errors")
            self._counters.add("dial_outcomes", label=reason)
            raise DialError(reason, maddr, detail_of(exc), nothing_listens(exc)) from exc
        self._counters.add("dial_outcomes", label="ok")

    async def _open_stream(self, peer: str, protocol: str, *alternatives: str) -> NetStream:
        """A stream on ``protocol``, or on the first of ``alternatives`` the peer speaks instead."""
        peer_id = _peer_id(peer)
        # Checked first: py-libp2p's new_stream would otherwise dial by itself, around our deadlines.
        if not self._is_connected(peer_id):
            raise RequestError("not-connected", peer, protocol)
        offered = [TProtocol(p) for p in (protocol, *alternatives)]
        try:
            with trio.fail_after(self._config.open_stream_timeout_ms / 1000):
                stream = await self._libp2p.new_stream(peer_id, offered)
        except trio.TooSlowError:
            raise RequestError("timeout", peer, protocol, "opening the stream") from None
        except StreamFailure as exc:
            raise RequestError("refused", peer, protocol, "the peer does not speak this protocol") from exc
        except Exception as exc:
            raise RequestError("stream", peer, protocol, repr(exc)) from exc
        assert isinstance(stream, NetStream), type(stream)
        return stream

    def _is_connected(self, peer_id: ID) -> bool:
        return bool(self._swarm.get_connections(peer_id))

    async def _identify(self, peer: str) -> PeerConnected:
        stream = await self._open_stream(peer, IDENTIFY_PROTOCOL_ID)
        try:
            info = await read_identify(stream)
        finally:
            with trio.CancelScope(shield=True):
                await stream.close()
        # Only a peer that dialed our listener saw our listening port; an outbound connection's source
        # port is an ephemeral one that nobody can dial back.
        inbound = self._is_inbound(stream)
        if info.observed_addr and inbound and self._observed.record(peer, info.observed_addr):
            logger.info("peers observe this node at %s; announcing it", info.observed_addr)
        return PeerConnected(peer, info.addrs, info.protocols, info.agent_version)

    def _is_inbound(self, stream: NetStream) -> bool:
        conns = self._swarm.get_connections(stream.muxed_conn.peer_id)
        return bool(conns) and all(
            isinstance(conn, SwarmConn) and conn.direction == Direction.INBOUND for conn in conns
        )

    def _known_info(self, peer: str) -> PeerConnected:
        peer_id = _peer_id(peer)
        peerstore = self._libp2p.get_peerstore()
        try:
            addrs = tuple(str(a) for a in peerstore.addrs(peer_id))
        except Exception:
            addrs = ()
        try:
            protocols = tuple(peerstore.get_protocols(peer_id))
        except Exception:
            protocols = ()
        return PeerConnected(peer, addrs, protocols)

    def _peer_connected(self, conn: INetConn) -> None:
        self._guards.connected(conn)
        peer = str(conn.muxed_conn.peer_id)
        if not is_allowed(self._config, peer):
            # Refused at connect: it never becomes a PeerConnected, so it never reaches membership.
            # (Inbound peers are refused earlier, in the handshake; this catches any that race it.)
            self._note_refusal(peer, "allow-list", "not on the allow-list")
            self._disconnect_soon(peer)
            return
        self._same_host[peer] = _comes_from_this_host(conn)
        self._presence.connected(peer)

    def refuse(self, peer: str, reason: str, why: str) -> None:
        """Closes the peer's connection for ``reason`` (counted in ``connections_refused`` by reason),
        with one log line saying ``why``."""
        self._note_refusal(peer, reason, why)
        self._disconnect_soon(peer)

    def accepted_from(self, peer: str) -> bool:
        """Whether the peer dialed us (an inbound connection), rather than we it."""
        return any(
            not conn.muxed_conn.secured_conn.is_initiator  # type: ignore[attr-defined]
            for conn in self._swarm.get_connections(_peer_id(peer))
        )

    def _note_refusal(self, peer: str, reason: str, why: str) -> None:
        self._counters.add("connections_refused", label=reason)
        logger.warning("refusing connection from %s: %s", peer, why)

    def _peer_disconnected(self, conn: INetConn) -> None:
        self._guards.disconnected(conn)
        peer_id = conn.muxed_conn.peer_id
        if self._is_connected(peer_id) or not is_allowed(self._config, str(peer_id)):
            return
        self._same_host.pop(str(peer_id), None)
        self._presence.disconnected(str(peer_id))
        self._outbound.drop_peer(str(peer_id))
        if self._datagrams is not None:
            self._datagrams.drop_peer(str(peer_id))

    def _remote_ip(self, peer: str) -> str | None:
        """The IP the peer's connection comes from (or goes to): where its UDP socket is."""
        for conn in self._swarm.get_connections(_peer_id(peer)):
            muxed = conn.muxed_conn
            if isinstance(muxed, Yamux):
                return ip_of(muxed.get_remote_address())
        return None

    def _bound_ip_ports(self) -> list[tuple[str, int]]:
        bound = []
        for addr in self._libp2p.get_transport_addrs():
            names = [p.name for p in addr.protocols()]
            ip = addr.value_for_protocol("ip6" if "ip6" in names else "ip4")
            bound.append((str(ip), int(addr.value_for_protocol("tcp"))))
        return bound


class _ConnectionNotifee(INotifee):
    """Forwards connection events; py-libp2p awaits notifees on its connection path, so these only
    update state and never block."""

    def __init__(self, on_connected: Callable[[INetConn], None], on_disconnected: Callable[[INetConn], None]):
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None


def _contained(protocol_id: str, handler: StreamHandler, counters: Counters) -> StreamHandler:
    async def contained(stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            await handler(stream)
        except RemoteProtocolError as exc:
            counters.add("protocol_errors", label=protocol_id)
            logger.warning("protocol error from %s on %s: %s; resetting the stream", peer, protocol_id, exc)
        except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("%s stream from %s ended: %r", protocol_id, peer, exc)
        except Exception:
            counters.add("handler_errors")
            logger.exception("stream handler for %s failed on a stream from %s", protocol_id, peer)
        else:
            return
        await finish_stream(stream, reset=True)

    return contained


def _comes_from_this_host(conn: INetConn) -> bool:
    """Unknown counts as another host: the safe side, as it only withholds loopback addresses."""
    muxed = conn.muxed_conn
    remote = muxed.get_remote_address() if isinstance(muxed, Yamux) else None
    if remote is None:
        return False
    ip = ipaddress.ip_address(remote[0])
    return ip.is_loopback or str(ip) in interface_ips()


def _parse_listen_addr(addr: str) -> Multiaddr:
    try:
        maddr = Multiaddr(addr)
    except Exception as exc:
        raise ConfigError(f"listen address {addr!r} is not a multiaddr: {exc}") from None
    names = [p.name for p in maddr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ConfigError(f"listen address {addr!r} must be /ip4/<ip>/tcp/<port> or /ip6/<ip>/tcp/<port>")
    return maddr


def _parse_dial_addr(maddr: str) -> tuple[Multiaddr, ID]:
    try:
        parsed = Multiaddr(maddr)
        peer = parsed.value_for_protocol(P_P2P)
    except Exception:
        peer = None
    if not peer:
        raise ValueError(f"dial address must be a multiaddr ending with /p2p/<peer-id>, got {maddr!r}")
    return parsed.decapsulate_code(P_P2P), _peer_id(peer)


@lru_cache(maxsize=4096)
def _peer_id(peer: str) -> ID:
    """``ID.from_base58``, remembered: every send looks its peer up, and base58 decoding cost about
    60 us a send under KV load (cProfile)."""
    return ID.from_base58(peer)
