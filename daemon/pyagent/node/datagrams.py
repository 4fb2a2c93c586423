"""Datagram paths: a protocol's small frames to a connected peer as sealed UDP datagrams (``proto.datagram``).

A path to a peer is set up over its libp2p connection (``SETUP_PROTOCOL``: our key, our channel id and
our UDP port; its channel id and port back), then proven by an echo, and only then carries frames.
Until then, and whenever it is not proven, `send` says no and the caller uses the stream. The peer's
address is its connection's IP with the UDP port it gave; the UDP socket is bound to the TCP listener's
own address and port, so one firewall rule names both ("4001/tcp and 4001/udp").

Every table here is bounded by the connected peers (a path is dropped with its connection), and the
receive loop awaits the daemon's bounded inbox, so a flood of datagrams waits in the kernel's buffer,
which drops what does not fit.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field

import trio

from pyagent.errors import RemoteProtocolError
from pyagent.node.counters import Counters
from pyagent.node.inbox import EventSender
from pyagent.proto import datagram
from pyagent.proto.datagram import Kind, Rejected
from pyagent.proto.events import Event, MessageReceived
from pyagent.proto.wire import FrameDecoder, Limits, Message

logger = logging.getLogger(__name__)

SETUP_PROTOCOL = "/pyagent/datagram/1.0.0"
SETUP_LIMITS = Limits(frame_size_bytes_max=512, depth_max=2, count_max=16)
SETUP_TIMEOUT_MS = 5_000
# A path is proven by one echo answered out of this many, sent this far apart.
ECHO_ATTEMPTS = 3
ECHO_INTERVAL_S = 0.5
# After a path failed (no UDP through, or a peer without datagrams), its frames take the stream for
# this long before the path is tried again.
RETRY_AFTER_S = 60.0
TOKEN_BYTES = 8

COUNTER_NAMES = (
    "datagrams_out",
    "datagrams_in",
    # Labelled with the reason (proto.datagram.Rejected's, or "send", "frame").
    "datagrams_dropped",
    "datagram_paths_proven",
    "datagram_paths_failed",
)

Request = Callable[[str, str, Message, int], Awaitable[Message]]


@dataclass
class _Outbound:
    """Our path to a peer: the frames of one protocol that we send it."""

    route: tuple[str, str]  # (peer, protocol)
    key: bytes
    our_id: int
    their_id: int
    addr: tuple[str, int]
    counter: int = 0
    proven: bool = False
    echo_token: bytes | None = None
    proving: bool = False


@dataclass
class _Inbound:
    """``peer``'s path to us: frames it sends us."""

    peer: str
    protocol: str
    key: bytes
    their_id: int
    window: datagram.ReplayWindow = field(default_factory=datagram.ReplayWindow)
    reply_counter: int = 0


class DatagramPaths:
    def __init__(
        self,
        events: EventSender[Event],
        counters: Counters,
        request: Request,
        remote_ip: Callable[[str], str | None],
    ) -> None:
        self._events = events
        self._counters = counters
        self._request = request
        self._remote_ip = remote_ip
        self._limits: dict[str, Limits] = {}
        # By address family: the plain socket sends (never blocking: a full buffer drops the datagram, as
        # the network may), and trio's wrapper of the same socket receives and closes it.
        self._sockets: dict[int, socket.socket] = {}
        self._receivers: list[trio.socket.SocketType] = []
        self._ports: dict[int, int] = {}
        # Ours, by (peer, protocol); and each one's id, which the peer's ECHO_REPLY comes back with.
        self._outbound: dict[tuple[str, str], _Outbound] = {}
        self._outbound_by_id: dict[int, tuple[str, str]] = {}
        self._failed_at: dict[tuple[str, str], float] = {}
        self._setting_up: set[tuple[str, str]] = set()
        # Paths whose failure was logged: a firewall that drops UDP is one line per peer, not one a minute.
        self._failure_told: set[tuple[str, str]] = set()
        self._inbound: dict[int, _Inbound] = {}
        self._nursery: trio.Nursery | None = None

    def carry(self, protocol: str, limits: Limits) -> None:
        """Frames of ``protocol`` may travel as datagrams (those that fit in one)."""
        self._limits[protocol] = limits

    def start(self, nursery: trio.Nursery, bound: list[tuple[str, int]]) -> None:
        """Binds a UDP socket beside each TCP listener (one per address family) and receives on it in
        ``nursery``. A UDP port that is taken costs only the datagrams: frames keep taking streams."""
        for ip, port in bound:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            if family in self._sockets:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((ip, port))
            except OSError as exc:
                sock.close()
                logger.warning(
                    "cannot bind udp %s:%d (%s); membership keeps to tcp streams", ip, port, exc.strerror
                )
                continue
            sock.setblocking(False)
            self._sockets[family], self._ports[family] = sock, port
            receiver = trio.socket.from_stdlib_socket(sock)
            self._receivers.append(receiver)
            nursery.start_soon(self._receive, receiver)
        self._nursery = nursery if self._sockets else None

    def close(self) -> None:
        self._nursery = None
        # Closed through trio, so that a receive waiting on the socket ends instead of failing on it.
        for receiver in self._receivers:
            receiver.close()
        self._receivers.clear()
        self._sockets.clear()

    # Sending.

    def send(self, peer: str, protocol: str, frame: bytes) -> bool:
        """Sends ``frame`` as a datagram if ``peer`` has a proven path for ``protocol`` and the frame fits;
        otherwise returns False (and sets a path up in the background) and the caller uses the stream."""
        if protocol not in self._limits or len(frame) > datagram.PAYLOAD_BYTES_MAX:
            return False
        path = self._outbound.get((peer, protocol))
        if path is None:
            self._set_up_soon(peer, protocol)
            return False
        if not path.proven:
            return False
        return self._send_packet(path, Kind.DATA, frame)

    def doubt(self, peer: str) -> None:
        """Something says the peer may be unreachable (membership suspects it): its frames take the stream
        until an echo proves its datagram paths again."""
        for (path_peer, _protocol), path in self._outbound.items():
            if path_peer == peer and path.proven:
                path.proven = False
                self._prove_soon(path)

    def drop_peer(self, peer: str) -> None:
        """The peer's connection is gone, and with it the keys it was given."""
        for key in [key for key in self._outbound if key[0] == peer]:
            self._drop_outbound(key)
        for key in [key for key in self._failed_at if key[0] == peer]:
            del self._failed_at[key]
            self._failure_told.discard(key)
        for channel in [c for c, path in self._inbound.items() if path.peer == peer]:
            del self._inbound[channel]

    def drop_inbound(self, peer: str, protocol: str) -> None:
        """What a frame the protocol core rejected costs its sender, as a stream reset does: it must set
        its path up again."""
        for channel in [c for c, p in self._inbound.items() if (p.peer, p.protocol) == (peer, protocol)]:
            del self._inbound[channel]

    def _drop_outbound(self, key: tuple[str, str]) -> None:
        path = self._outbound.pop(key, None)
        if path is not None:
            self._outbound_by_id.pop(path.our_id, None)

    def _send_packet(self, path: _Outbound, kind: Kind, payload: bytes) -> bool:
        if path.counter == datagram.COUNTER_MAX:
            # Every nonce of this key is spent: the next send sets a path up with a fresh one.
            if self._outbound.get(path.route) is path:
                self._drop_outbound(path.route)
            return False
        path.counter += 1
        packet = datagram.seal(path.key, kind, path.their_id, path.counter, payload)
        return self._sendto(packet, path.addr)

    def _sendto(self, packet: bytes, addr: tuple[str, int]) -> bool:
        sock = self._sockets.get(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
        if sock is None:
            return False
        try:
            sock.sendto(packet, addr)
        except OSError:
            # A full socket buffer or an unreachable network: dropped, as a datagram may be.
            self._counters.add("datagrams_dropped", label="send")
            return False
        self._counters.add("datagrams_out")
        return True

    # Setting a path up and proving it.

    def _set_up_soon(self, peer: str, protocol: str) -> None:
        key = (peer, protocol)
        if self._nursery is None or key in self._setting_up:
            return
        failed_at = self._failed_at.get(key)
        if failed_at is not None and trio.current_time() - failed_at < RETRY_AFTER_S:
            return
        self._setting_up.add(key)
        self._nursery.start_soon(self._set_up, peer, protocol)

    async def _set_up(self, peer: str, protocol: str) -> None:
        key = (peer, protocol)
        try:
            path = await self._open(peer, protocol)
            if self._remote_ip(peer) is None:
                return  # disconnected meanwhile: `drop_peer` has run, so keep nothing about it
            if path is None:
                self._failed(key, "the peer did not open a path")
                return
            self._outbound[key] = path
            self._outbound_by_id[path.our_id] = key
            if not await self._prove(path) and self._outbound.get(key) is path:
                self._drop_outbound(key)
                self._failed(key, "no echo came back over udp")
        finally:
            self._setting_up.discard(key)

    async def _open(self, peer: str, protocol: str) -> _Outbound | None:
        ip = self._remote_ip(peer)
        if ip is None:
            return None
        port = self._ports.get(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        if port is None:
            return None
        path_key, our_id = os.urandom(datagram.KEY_BYTES), _fresh_id(self._outbound_by_id)
        request = {"v": 1, "t": "open", "protocol": protocol, "key": path_key, "id": our_id, "port": port}
        try:
            reply = await self._request(peer, SETUP_PROTOCOL, request, SETUP_TIMEOUT_MS)
        except Exception as exc:  # RequestError, or a peer that does not speak SETUP_PROTOCOL
            logger.debug("datagram path to %s not opened: %r", peer, exc)
            return None
        their_id, their_port = reply.get("id"), reply.get("port")
        if reply.get("t") != "opened" or not _is_u32(their_id) or not _is_port(their_port):
            return None
        assert isinstance(their_id, int) and isinstance(their_port, int)
        return _Outbound((peer, protocol), path_key, our_id, their_id, (ip, their_port))

    async def _prove(self, path: _Outbound) -> bool:
        for _attempt in range(ECHO_ATTEMPTS):
            path.echo_token = os.urandom(TOKEN_BYTES)
            self._send_packet(path, Kind.ECHO, path.echo_token)
            await trio.sleep(ECHO_INTERVAL_S)
            if path.proven:
                return True
        path.echo_token = None
        return False

    def _prove_soon(self, path: _Outbound) -> None:
        if self._nursery is not None and not path.proving:
            self._nursery.start_soon(self._reprove, path)

    async def _reprove(self, path: _Outbound) -> None:
        path.proving = True
        try:
            if not await self._prove(path) and self._outbound.get(path.route) is path:
                self._drop_outbound(path.route)
                self._failed(path.route, "no echo came back over udp")
        finally:
            path.proving = False

    def _failed(self, key: tuple[str, str], why: str) -> None:
        self._failed_at[key] = trio.current_time()
        self._counters.add("datagram_paths_failed")
        if key in self._failure_told:
            return
        self._failure_told.add(key)
        logger.info(
            "no datagram path to %s (%s); its %s frames take the stream, retried in %.0f s",
            key[0],
            why,
            key[1],
            RETRY_AFTER_S,
        )

    async def handle_open(self, peer: str, request: Message) -> Message:
        """The setup request handler: the peer gives us a key for its frames to us."""
        protocol, path_key = request.get("protocol"), request.get("key")
        their_id, their_port = request.get("id"), request.get("port")
        if request.get("t") != "open" or not isinstance(protocol, str) or not _is_u32(their_id):
            raise RemoteProtocolError("malformed datagram path request")
        if not isinstance(path_key, bytes) or len(path_key) != datagram.KEY_BYTES or not _is_port(their_port):
            raise RemoteProtocolError("malformed datagram path request")
        assert isinstance(their_id, int)
        ip = self._remote_ip(peer)
        port = self._ports.get(socket.AF_INET6 if ip and ":" in ip else socket.AF_INET)
        if protocol not in self._limits or port is None:
            return {"v": 1, "t": "refused"}
        self.drop_inbound(peer, protocol)
        channel = _fresh_id(self._inbound)
        self._inbound[channel] = _Inbound(peer, protocol, path_key, their_id)
        return {"v": 1, "t": "opened", "id": channel, "port": port}

    # Receiving.

    async def _receive(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                packet, source = await sock.recvfrom(datagram.PACKET_BYTES_MAX + 1)
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                # An ICMP error for an earlier send (port unreachable) surfaces here on Linux.
                logger.debug("udp receive: %r", exc)
                continue
            try:
                await self._on_packet(packet, source)
            except Rejected as exc:
                self._counters.add("datagrams_dropped", label=exc.reason)

    async def _on_packet(self, packet: bytes, source: tuple[str, int]) -> None:
        header = datagram.read_header(packet)
        if header.kind is Kind.ECHO_REPLY:
            self._on_echo_reply(header, packet)
            return
        path = self._inbound.get(header.channel)
        if path is None:
            raise Rejected("channel")
        payload = datagram.open_sealed(path.key, header, packet)
        if not path.window.accept(header.counter):
            raise Rejected("replay")
        self._counters.add("datagrams_in")
        if header.kind is Kind.ECHO:
            if path.reply_counter == datagram.COUNTER_MAX:
                raise Rejected("exhausted")
            path.reply_counter += 1
            reply = datagram.seal(path.key, Kind.ECHO_REPLY, path.their_id, path.reply_counter, payload)
            self._sendto(reply, (source[0], source[1]))
            return
        await self._deliver(path, payload)

    def _on_echo_reply(self, header: datagram.Header, packet: bytes) -> None:
        key = self._outbound_by_id.get(header.channel)
        path = self._outbound.get(key) if key is not None else None
        if path is None:
            raise Rejected("channel")
        token = datagram.open_sealed(path.key, header, packet)
        if path.echo_token is None or token != path.echo_token:
            raise Rejected("replay")
        self._counters.add("datagrams_in")
        path.echo_token = None
        if not path.proven:
            path.proven = True
            self._counters.add("datagram_paths_proven")

    async def _deliver(self, path: _Inbound, frame: bytes) -> None:
        try:
            messages = FrameDecoder(self._limits[path.protocol]).feed(frame)
            if len(messages) != 1:
                raise RemoteProtocolError("a datagram must hold exactly one whole frame")
        except RemoteProtocolError as exc:
            # Sealed with the key this peer was given: the bad bytes are the peer's.
            self._counters.add("protocol_errors", label=path.protocol)
            self._counters.add("datagrams_dropped", label="frame")
            logger.warning(
                "protocol error from %s in a %s datagram: %s; dropping its path",
                path.peer,
                path.protocol,
                exc,
            )
            self.drop_inbound(path.peer, path.protocol)
            return
        self._counters.add("frames_in", label=path.protocol)
        self._counters.add("bytes_in", len(frame), label=path.protocol)
        await self._events.send(MessageReceived(path.peer, path.protocol, messages[0]))


def _fresh_id(taken: Container[int]) -> int:
    """A random channel id not in ``taken``: ids are only unique per recipient, so a random one needs no
    coordination and tells an attacker nothing."""
    while True:
        channel = int.from_bytes(os.urandom(4), "big")
        if channel not in taken:
            return channel


def _is_u32(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= datagram.CHANNEL_MAX


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65_536


def ip_of(remote: tuple[str, int] | None) -> str | None:
    """The IP of a connection's remote address, without an IPv6 zone, or None."""
    if remote is None:
        return None
    try:
        return str(ipaddress.ip_address(remote[0].split("%")[0]))
    except ValueError:
        return None
