"""Bytes on the wire between agents on 127.0.0.1, counted by nftables, TCP/UDP and IP headers included.

One table with one chain on the ``output`` hook: every loopback packet passes it exactly once (the
``input`` hook would see it a second time). A packet counts when its source or destination port is one
of the agents' listening ports; the first matching rule accepts it, so a UDP packet between two agents'
ports (Serf) is not counted twice. A TCP connection has the listener's port on one end, so every packet
of every connection between agents counts once, whichever side dialed. nftables counts the IP packet's
length: payload, TCP or UDP header and IP header, not the loopback's pseudo-Ethernet header.

Beside the total, pure TCP acknowledgements (no payload: IP + TCP header with timestamps, 52 bytes on
Linux) are counted apart, because they are the part of TCP's overhead that a datagram protocol does not
have.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

TABLE = "pyagent_wire_bench"
# IPv4 header (20) + TCP header with the timestamp option Linux sets by default (32), no payload.
PURE_ACK_IP_LENGTH = 52


class NftUnavailable(Exception):
    pass


@dataclass(frozen=True)
class WireCount:
    packets: int
    bytes: int
    pure_ack_packets: int
    pure_ack_bytes: int

    def __add__(self, other: WireCount) -> WireCount:
        return WireCount(
            self.packets + other.packets,
            self.bytes + other.bytes,
            self.pure_ack_packets + other.pure_ack_packets,
            self.pure_ack_bytes + other.pure_ack_bytes,
        )

    def __sub__(self, other: WireCount) -> WireCount:
        return WireCount(
            self.packets - other.packets,
            self.bytes - other.bytes,
            self.pure_ack_packets - other.pure_ack_packets,
            self.pure_ack_bytes - other.pure_ack_bytes,
        )


def _nft(*commands: str) -> str:
    try:
        done = subprocess.run(["nft", *commands], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise NftUnavailable("nft is not installed (apt-get install nftables)") from None
    if done.returncode != 0:
        raise NftUnavailable(f"nft {' '.join(commands)}: {done.stderr.strip()}")
    return done.stdout


class WireCounters:
    """Counters for the packets to or from a set of ports; `read` returns the totals so far."""

    def __init__(self, ports: Sequence[int]) -> None:
        self._ports = ", ".join(str(port) for port in sorted(set(ports)))

    def install(self) -> None:
        _nft("add", "table", "inet", TABLE)
        _nft("add", "chain", "inet", TABLE, "out", "{ type filter hook output priority 0; policy accept; }")
        for direction in ("sport", "dport"):
            # The pure-ACK rule comes first and accepts, so the total is the sum of all four counters.
            _nft(
                "add", "rule", "inet", TABLE, "out", "meta", "l4proto", "tcp", "th", direction,
                f"{{ {self._ports} }}", "ip", "length", str(PURE_ACK_IP_LENGTH), "counter", "accept",
            )  # fmt: skip
            _nft(
                "add", "rule", "inet", TABLE, "out", "meta", "l4proto", "{ tcp, udp }", "th", direction,
                f"{{ {self._ports} }}", "counter", "accept",
            )  # fmt: skip

    def read(self) -> WireCount:
        listing = json.loads(_nft("-j", "list", "chain", "inet", TABLE, "out"))
        counters = [
            item["rule"]
            for item in listing["nftables"]
            if "rule" in item and any("counter" in expr for expr in item["rule"]["expr"])
        ]
        acks = [_counter_of(rule) for rule in counters if _is_pure_ack_rule(rule)]
        others = [_counter_of(rule) for rule in counters if not _is_pure_ack_rule(rule)]
        ack_packets, ack_bytes = sum(p for p, _ in acks), sum(b for _, b in acks)
        return WireCount(
            packets=ack_packets + sum(p for p, _ in others),
            bytes=ack_bytes + sum(b for _, b in others),
            pure_ack_packets=ack_packets,
            pure_ack_bytes=ack_bytes,
        )

    def remove(self) -> None:
        _nft("delete", "table", "inet", TABLE)


def _is_pure_ack_rule(rule: dict[str, object]) -> bool:
    return '"length"' in json.dumps(rule["expr"])


def _counter_of(rule: dict[str, object]) -> tuple[int, int]:
    for expr in rule["expr"]:  # type: ignore[attr-defined]
        if "counter" in expr:
            return int(expr["counter"]["packets"]), int(expr["counter"]["bytes"])
    raise AssertionError("a counting rule without a counter")


@contextmanager
def wire_counters(ports: Sequence[int]) -> Iterator[WireCounters]:
    """Install counters for ``ports``, and remove them afterwards, also on error."""
    counters = WireCounters(ports)
    # A table left over from an interrupted run would add its counts; usually there is none.
    with suppress(NftUnavailable):
        _nft("delete", "table", "inet", TABLE)
    counters.install()
    try:
        yield counters
    finally:
        counters.remove()
