"""Flood limits (node/limits.py): the admission tables and token buckets, with the clock passed in."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

import pytest

from pyagent import config as config_module
from pyagent.errors import ConfigError
from pyagent.node import limits
from pyagent.node.host_config import FloodLimits
from pyagent.node.limits import InboundAdmission, StreamRateLimiter, StreamVerdict, TokenBucket


class _Counter(Counter[str]):
    def update_one(self, name: str) -> None:
        self[name] += 1


def admit(gate: InboundAdmission, address: tuple[str, int], now_s: float) -> bool:
    """Admits a connection keyed, as a test can name it, by its (ip, port)."""
    return gate.admit(address, address[0], now_s)


def _admission(**settings: int) -> tuple[InboundAdmission, _Counter]:
    refused = _Counter()
    return InboundAdmission(FloodLimits(**settings), refused.update_one), refused


def test_pending_handshakes_are_limited_per_ip_and_another_ip_still_gets_in() -> None:
    gate, refused = _admission(pending_handshakes_per_ip_max=3)
    assert [admit(gate, ("10.0.0.1", port), 0.0) for port in range(1, 6)] == [True, True, True, False, False]
    assert refused == {limits.REFUSED_PENDING_PER_IP: 2}
    assert admit(gate, ("10.0.0.2", 1), 0.0)
    assert gate.counts("10.0.0.1") == (3, 0)
    # A finished handshake frees a pending slot for its IP.
    gate.upgraded(("10.0.0.1", 1))
    assert gate.counts("10.0.0.1") == (2, 1)
    assert admit(gate, ("10.0.0.1", 6), 0.0)


def test_a_failed_handshake_frees_its_slot_once() -> None:
    gate, _ = _admission(pending_handshakes_per_ip_max=1)
    assert admit(gate, ("10.0.0.1", 1), 0.0)
    assert not admit(gate, ("10.0.0.1", 2), 0.0)
    gate.ended(("10.0.0.1", 1))
    gate.ended(("10.0.0.1", 1))  # idempotent: the listener and the swarm may both report it
    assert gate.counts("10.0.0.1") == (0, 0) and gate.pending_total == 0
    assert admit(gate, ("10.0.0.1", 2), 0.0)


def test_connections_per_ip_count_pending_and_established() -> None:
    gate, refused = _admission(pending_handshakes_per_ip_max=2, connections_per_ip_max=3)
    for port in (1, 2, 3):
        assert admit(gate, ("10.0.0.1", port), 0.0)
        gate.upgraded(("10.0.0.1", port))
    assert not admit(gate, ("10.0.0.1", 4), 0.0)
    assert refused == {limits.REFUSED_CONNECTIONS_PER_IP: 1}
    gate.ended(("10.0.0.1", 2))  # an established connection closed
    assert gate.counts("10.0.0.1") == (0, 2)
    assert admit(gate, ("10.0.0.1", 4), 0.0)


def test_pending_handshakes_are_limited_in_total() -> None:
    gate, refused = _admission(pending_handshakes_max=4, pending_handshakes_per_ip_max=2)
    admitted = [admit(gate, (f"10.0.0.{ip}", 1), 0.0) for ip in range(1, 7)]
    assert admitted == [True] * 4 + [False] * 2
    assert refused == {limits.REFUSED_PENDING_TOTAL: 2}
    gate.upgraded(("10.0.0.1", 1))
    assert gate.pending_total == 3
    assert admit(gate, ("10.0.0.9", 1), 0.0)


def test_new_connections_per_ip_are_rate_limited() -> None:
    gate, refused = _admission(connections_per_ip_per_s=2, connections_per_ip_burst=3)
    port = 0

    def attempt(now_s: float) -> bool:
        nonlocal port
        port += 1
        address = ("10.0.0.1", port)
        admitted = admit(gate, address, now_s)
        gate.ended(address)  # opened and dropped at once: never more than one pending
        return admitted

    assert [attempt(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert refused == {limits.REFUSED_RATE_PER_IP: 2}
    assert attempt(0.5) and not attempt(0.5)  # 2 a second: one more after half a second
    assert admit(gate, ("10.0.0.2", 1), 0.5)  # another IP has its own bucket


def test_outbound_and_unknown_connections_are_ignored() -> None:
    gate, _ = _admission()
    gate.upgraded(("192.0.2.1", 4001))  # an outbound connection: never admitted here
    gate.ended(("192.0.2.1", 4001))
    assert gate.counts("192.0.2.1") == (0, 0) and gate.pending_total == 0


def test_the_ip_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "TRACKED_IPS_MAX", 8)
    gate, _ = _admission()
    busy = ("10.0.1.1", 1)
    assert admit(gate, busy, 0.0)
    for index in range(50):
        address = (f"10.0.0.{index}", 1)
        assert admit(gate, address, 0.0)
        gate.ended(address)
    assert gate.tracked_ips <= 8
    assert gate.counts("10.0.1.1") == (1, 0)  # a busy IP is never the one forgotten


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=5, now_s=0.0)
    assert sum(bucket.take(0.0) for _ in range(20)) == 5
    assert sum(bucket.take(0.3) for _ in range(20)) == 3
    assert sum(bucket.take(100.0) for _ in range(20)) == 5  # capped at the burst
    assert not bucket.take(50.0)  # a clock that goes back refills nothing


def test_stream_opens_are_limited_per_peer() -> None:
    limiter = StreamRateLimiter(rate_per_s=100, burst=10)
    verdicts = [limiter.allow("flooder", 0.0) for _ in range(25)]
    # A burst of opens, then a burst of resets, then the connection is closed.
    assert verdicts == [StreamVerdict.OPEN] * 10 + [StreamVerdict.RESET] * 10 + [StreamVerdict.DISCONNECT] * 5
    assert limiter.allow("quiet", 0.0) is StreamVerdict.OPEN
    # 100 a second: five more after 50 ms, and five more resets.
    verdicts = [limiter.allow("flooder", 0.05) for _ in range(12)]
    assert verdicts == [StreamVerdict.OPEN] * 5 + [StreamVerdict.RESET] * 5 + [StreamVerdict.DISCONNECT] * 2


def test_a_peer_at_a_steady_rate_over_the_limit_but_below_twice_it_is_only_reset() -> None:
    limiter = StreamRateLimiter(rate_per_s=10, burst=10)
    verdicts = [limiter.allow("eager", step * 0.06) for step in range(1_000)]  # ~16.7 a second
    assert StreamVerdict.DISCONNECT not in verdicts
    assert verdicts.count(StreamVerdict.OPEN) > 590


def test_the_peer_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "TRACKED_PEERS_MAX", 4)
    limiter = StreamRateLimiter(rate_per_s=1, burst=1)
    for index in range(10):
        limiter.allow(f"peer{index}", 0.0)
    assert len(limiter) == 4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pending_handshakes_max": 0}, "pending_handshakes_max must be a positive integer"),
        ({"stream_opens_per_peer_burst": -1}, "stream_opens_per_peer_burst must be a positive integer"),
        ({"pending_handshakes_per_ip_max": 100}, "must not exceed pending_handshakes_max"),
        (
            {"pending_handshakes_per_ip_max": 40, "connections_per_ip_max": 20},
            "must not exceed connections_per_ip_max",
        ),
    ],
)
def test_settings_are_checked(settings: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FloodLimits(**settings)


def test_host_section_defaults_are_the_limits_defaults() -> None:
    section = config_module.HostSection()
    for f in fields(FloodLimits):
        assert getattr(section, f.name) == getattr(FloodLimits(), f.name), f.name
    rendered = config_module.render(["/ip4/127.0.0.1/tcp/0"])
    for f in fields(FloodLimits):
        assert f"\n{f.name} = {getattr(FloodLimits(), f.name)} " in rendered, f.name


def test_a_bad_setting_in_the_config_file_is_one_config_error() -> None:
    raw = {"host": {"pending_handshakes_per_ip_max": 80, "pending_handshakes_max": 64}}
    with pytest.raises(ConfigError, match=r"^config.toml: \[host\] pending_handshakes_per_ip_max \(80\)"):
        config_module.parse(raw, "config.toml")
    with pytest.raises(ConfigError, match="'stream_opens_per_peer_per_s' must be positive"):
        config_module.parse({"host": {"stream_opens_per_peer_per_s": 0}}, "config.toml")
