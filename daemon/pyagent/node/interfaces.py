"""This machine's interface addresses, for expanding a listener bound to 0.0.0.0 or ``::``.

No dependency: the interfaces come from ``socket.if_nameindex``, whether each is up from the
``SIOCGIFFLAGS`` ioctl, its IPv4 address from ``SIOCGIFADDR`` (the primary one, which is what peers
dial) and its IPv6 addresses from ``/proc/net/if_inet6``. Interfaces that are down are skipped: nobody
can reach us there.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from pyagent.proto import addresses

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IF_INET6 = Path("/proc/net/if_inet6")


def announced_addrs(
    bound: Sequence[str],
    announce: Sequence[str],
    no_announce: addresses.NoAnnounce,
    observed: Sequence[str] = (),
) -> list[str]:
    """What a node bound to ``bound`` tells peers to dial (``Host.announced_addrs``; ``pyagent id``
    without a running daemon): its unspecified addresses expanded into this machine's, then
    ``addresses.advertised`` and ``addresses.for_remote_peers``."""
    expanded = addresses.expand_unspecified(bound, interface_ips())
    return addresses.for_remote_peers(addresses.advertised(expanded, announce, no_announce, observed))


def interface_ips() -> list[str]:
    """Every IPv4 and IPv6 address of an interface that is up, loopback included."""
    ipv4: list[str] = []
    up: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
            except OSError:
                continue  # the interface went away meanwhile
            if not struct.unpack_from("H", answer, 16)[0] & _IFF_UP:
                continue
            up.add(name)
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this interface
            ipv4.append(socket.inet_ntoa(answer[20:24]))
    return [*ipv4, *_ipv6_addresses(up)]


def _ipv6_addresses(interfaces: set[str]) -> list[str]:
    """``/proc/net/if_inet6`` has one line per address, ``<32 hex digits> <index> <prefix> <scope>
    <flags> <name>``; it is absent when IPv6 is disabled."""
    try:
        lines = _IF_INET6.read_text().splitlines()
    except OSError:
        return []
    ips = []
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] in interfaces:
            ips.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return ips
