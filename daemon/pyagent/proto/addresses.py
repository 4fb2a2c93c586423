"""Which of this node's addresses others can dial, and so which ones it advertises.

A listener bound to ``0.0.0.0`` or ``::`` is reachable at every address of the machine, but the
unspecified address itself means "this host" to whoever dials it: advertised as is, it sends every peer
to itself. So, as kubo does, an unspecified listen address is expanded into the interface addresses;
``announce`` replaces the result and ``no_announce`` filters it (kubo's Addresses.Announce/NoAnnounce);
an address that peers observe for us joins it once more than one peer reports it (a NAT's public side).

Pure functions and one bounded table: the shell enumerates the interfaces and reads identify.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyagent.proto.types import PeerId

# An observed address counts once this many distinct peers report it: one peer alone could be lying
# or behind a NAT of its own (go-libp2p asks for 4 of distinct groups; our meshes are small).
OBSERVERS_TO_CONFIRM = 2
# Bounds what peers can make us hold: addresses tracked, and observers remembered per address.
OBSERVED_ADDRS_MAX = 32
OBSERVERS_PER_ADDR_MAX = 8

_UNSPECIFIED = {"0.0.0.0", "::"}


@dataclass(frozen=True, slots=True)
class IpTcp:
    """An ``/ip4|ip6/<ip>/tcp/<port>`` address, the only kind the host listens on."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        return f"/ip{self.ip.version}/{self.ip}/tcp/{self.port}"


def parse_ip_tcp(addr: str) -> IpTcp | None:
    """``addr`` without any ``/p2p/...`` suffix as an IpTcp, or None if it is some other multiaddr."""
    parts = addr.split("/")
    if len(parts) < 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    if len(parts) > 5 and parts[5] != "p2p":
        return None
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        return None
    if ip.version != int(parts[1][2]) or not 0 <= port <= 65535:
        return None
    return IpTcp(ip, port)


def is_loopback(addr: str) -> bool:
    parsed = parse_ip_tcp(addr)
    return parsed is not None and parsed.ip.is_loopback


def is_unspecified(addr: str) -> bool:
    parsed = parse_ip_tcp(addr)
    return parsed is not None and parsed.ip.is_unspecified


def expand_unspecified(bound: Iterable[str], interface_ips: Iterable[str]) -> list[str]:
    """Each bound address, with an unspecified IP replaced by every interface IP of its family.

    IPv6 link-local addresses are left out: they are dialable only with the interface's zone, which a
    multiaddr gossiped to other hosts cannot name.
    """
    ips = [ipaddress.ip_address(ip) for ip in interface_ips]
    expanded: list[str] = []
    for addr in bound:
        parsed = parse_ip_tcp(addr)
        if parsed is None or not parsed.ip.is_unspecified:
            _append_new(expanded, addr)
            continue
        for ip in ips:
            if ip.version == parsed.ip.version and not ip.is_link_local:
                _append_new(expanded, str(IpTcp(ip, parsed.port)))
    return expanded


@dataclass(frozen=True, slots=True)
class NoAnnounce:
    """``no_announce`` entries: exact addresses, or ``/ip4/<net>/ipcidr/<bits>`` ranges (as kubo's)."""

    exact: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> NoAnnounce:
        """Raises ``ValueError`` naming the first entry that is neither form."""
        exact: set[str] = set()
        networks = []
        for entry in entries:
            network = parse_ipcidr(entry)
            if network is not None:
                networks.append(network)
            elif parse_ip_tcp(entry) is not None:
                exact.add(_strip_peer(entry))
            else:
                raise ValueError(
                    f"{entry!r} is neither an address like /ip4/10.0.0.1/tcp/4001 nor a range like "
                    "/ip4/10.0.0.0/ipcidr/8"
                )
        return cls(frozenset(exact), tuple(networks))

    def hides(self, addr: str) -> bool:
        if _strip_peer(addr) in self.exact:
            return True
        parsed = parse_ip_tcp(addr)
        return parsed is not None and any(parsed.ip in network for network in self.networks)


def parse_ipcidr(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    parts = entry.split("/")
    if len(parts) != 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "ipcidr":
        return None
    try:
        network = ipaddress.ip_network(f"{parts[2]}/{parts[4]}", strict=False)
    except ValueError:
        return None
    return network if network.version == int(parts[1][2]) else None


def advertised(
    expanded: Sequence[str],
    announce: Sequence[str],
    no_announce: NoAnnounce,
    observed: Sequence[str] = (),
) -> list[str]:
    """What this node tells others: ``announce`` if set, else the expanded listen addresses and the
    confirmed observed ones; then without what ``no_announce`` hides, and never an unspecified address."""
    candidates = list(announce) if announce else [*expanded, *observed]
    result: list[str] = []
    for addr in candidates:
        if not is_unspecified(addr) and not no_announce.hides(addr):
            _append_new(result, addr)
    return result


def for_remote_peers(addrs: Sequence[str]) -> list[str]:
    """What a peer on another host may be told: no loopback (it would dial itself) and no unspecified
    address. Gossip relays an entry to hosts its author never met, so a node's gossiped addresses obey
    this rule, unless loopback is all it has: then only peers on its own host can reach it at all."""
    routable = [addr for addr in addrs if not is_loopback(addr) and not is_unspecified(addr)]
    if routable:
        return routable
    return [addr for addr in addrs if not is_unspecified(addr)]


def fit(addrs: Sequence[str], count_max: int, bytes_max: int) -> list[str]:
    """The addresses, in order, that fit in a budget of ``count_max`` addresses and ``bytes_max`` bytes
    (membership gossips at most that much per member): a machine with many interfaces announces its
    first ones rather than fail."""
    fitted: list[str] = []
    used_bytes = 0
    for addr in addrs:
        size = len(addr.encode())
        if len(fitted) == count_max or used_bytes + size > bytes_max:
            break
        fitted.append(addr)
        used_bytes += size
    return fitted


class ObservedAddrs:
    """The addresses peers tell us they see us at (identify's ``observed_addr``), each with the distinct
    peers that reported it; confirmed once ``OBSERVERS_TO_CONFIRM`` of them agree. Bounded: the oldest
    address is forgotten when a new one would exceed ``OBSERVED_ADDRS_MAX``."""

    def __init__(self, addrs_max: int = OBSERVED_ADDRS_MAX) -> None:
        self._addrs_max = addrs_max
        # Insertion order is age order, for eviction.
        self._observers: dict[str, set[PeerId]] = {}

    def record(self, peer: PeerId, addr: str) -> bool:
        """Note that ``peer`` sees us at ``addr``; True if that newly confirms ``addr``. Loopback,
        unspecified and non-TCP addresses are ignored: they say nothing about how others reach us."""
        parsed = parse_ip_tcp(addr)
        if parsed is None or parsed.ip.is_loopback or parsed.ip.is_unspecified or parsed.port == 0:
            return False
        key = str(parsed)
        observers = self._observers.get(key)
        if observers is None:
            if len(self._observers) >= self._addrs_max:
                del self._observers[next(iter(self._observers))]
            observers = self._observers[key] = set()
        if peer in observers or len(observers) >= OBSERVERS_PER_ADDR_MAX:
            return False
        observers.add(peer)
        return len(observers) == OBSERVERS_TO_CONFIRM

    def confirmed(self) -> list[str]:
        return [addr for addr, observers in self._observers.items() if len(observers) >= OBSERVERS_TO_CONFIRM]


def _strip_peer(addr: str) -> str:
    index = addr.find("/p2p/")
    return addr if index < 0 else addr[:index]


def _append_new(addrs: list[str], addr: str) -> None:
    if addr not in addrs:
        addrs.append(addr)
