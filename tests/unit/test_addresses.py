"""What a node advertises: expansion of 0.0.0.0 and ::, announce and no_announce, observed addresses
confirmed by more than one peer, and loopback never told to other hosts while anything else exists."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent.config import DEFAULT_LISTEN, check_announce_addr, check_no_announce, parse, render
from pyagent.errors import ConfigError
from pyagent.node.interfaces import interface_ips
from pyagent.proto import addresses
from pyagent.proto.addresses import NoAnnounce, ObservedAddrs
from pyagent.proto.membership import codec
from pyagent.proto.membership.records import Entry, State

IFACES = ["127.0.0.1", "10.0.0.5", "192.168.1.9", "::1", "fd00::5", "fe80::1"]
NOTHING_HIDDEN = NoAnnounce.parse([])


def test_unspecified_ipv4_expands_into_every_ipv4_interface_address() -> None:
    expanded = addresses.expand_unspecified(["/ip4/0.0.0.0/tcp/4001"], IFACES)
    assert expanded == ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.5/tcp/4001", "/ip4/192.168.1.9/tcp/4001"]


def test_unspecified_ipv6_expands_without_link_local_addresses() -> None:
    expanded = addresses.expand_unspecified(["/ip6/::/tcp/4001"], IFACES)
    assert expanded == ["/ip6/::1/tcp/4001", "/ip6/fd00::5/tcp/4001"]


def test_a_specific_listen_address_is_kept_as_is_and_duplicates_collapse() -> None:
    bound = ["/ip4/10.0.0.5/tcp/4001", "/ip4/0.0.0.0/tcp/4001"]
    expanded = addresses.expand_unspecified(bound, ["10.0.0.5"])
    assert expanded == ["/ip4/10.0.0.5/tcp/4001"]


def test_announce_replaces_the_listen_addresses_and_observed_ones() -> None:
    announce = ["/ip4/203.0.113.7/tcp/4001"]
    advertised = addresses.advertised(
        ["/ip4/10.0.0.5/tcp/4001"], announce, NOTHING_HIDDEN, ["/ip4/198.51.100.1/tcp/4001"]
    )
    assert advertised == announce


def test_no_announce_hides_exact_addresses_and_ranges() -> None:
    expanded = addresses.expand_unspecified(
        ["/ip4/0.0.0.0/tcp/4001"], ["10.0.0.5", "172.17.0.1", "192.168.1.9"]
    )
    hidden = NoAnnounce.parse(["/ip4/172.17.0.0/ipcidr/16", "/ip4/192.168.1.9/tcp/4001/p2p/12D3KooWabc"])
    assert addresses.advertised(expanded, [], hidden) == ["/ip4/10.0.0.5/tcp/4001"]


def test_no_announce_filters_announce_too() -> None:
    announce = ["/ip4/203.0.113.7/tcp/4001", "/ip4/10.0.0.5/tcp/4001"]
    hidden = NoAnnounce.parse(["/ip4/10.0.0.0/ipcidr/8"])
    assert addresses.advertised([], announce, hidden) == ["/ip4/203.0.113.7/tcp/4001"]


def test_an_unspecified_address_is_never_advertised() -> None:
    assert addresses.advertised(["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"], [], NOTHING_HIDDEN) == []


def test_confirmed_observed_addresses_join_the_listen_addresses() -> None:
    advertised = addresses.advertised(
        ["/ip4/10.0.0.5/tcp/4001"], [], NOTHING_HIDDEN, ["/ip4/203.0.113.7/tcp/4001"]
    )
    assert advertised == ["/ip4/10.0.0.5/tcp/4001", "/ip4/203.0.113.7/tcp/4001"]


def test_loopback_is_left_out_for_other_hosts_while_a_routable_address_exists() -> None:
    addrs = ["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.5/tcp/4001", "/ip6/::1/tcp/4001"]
    assert addresses.for_remote_peers(addrs) == ["/ip4/10.0.0.5/tcp/4001"]


def test_a_loopback_only_node_keeps_its_loopback_addresses() -> None:
    # Only peers on its own host can reach it at all, and those need the loopback address.
    addrs = ["/ip4/127.0.0.1/tcp/4001", "/ip4/0.0.0.0/tcp/4002"]
    assert addresses.for_remote_peers(addrs) == ["/ip4/127.0.0.1/tcp/4001"]


def test_an_observed_address_counts_once_two_distinct_peers_report_it() -> None:
    observed = ObservedAddrs()
    addr = "/ip4/203.0.113.7/tcp/4001"
    assert not observed.record("peer-a", addr)
    assert not observed.record("peer-a", addr)  # the same peer twice is still one observer
    assert observed.confirmed() == []
    assert observed.record("peer-b", addr)
    assert observed.confirmed() == [addr]
    assert not observed.record("peer-c", addr)  # already confirmed: nothing new
    assert observed.confirmed() == [addr]


def test_observations_that_say_nothing_about_reachability_are_ignored() -> None:
    observed = ObservedAddrs()
    for addr in ["/ip4/127.0.0.1/tcp/4001", "/ip4/0.0.0.0/tcp/4001", "/ip4/1.2.3.4/udp/4001", "garbage", ""]:
        for peer in ("peer-a", "peer-b"):
            assert not observed.record(peer, addr)
    assert observed.confirmed() == []


def test_observed_addresses_are_bounded_and_the_oldest_is_forgotten() -> None:
    observed = ObservedAddrs(addrs_max=4)
    for index in range(10):
        observed.record("peer-a", f"/ip4/198.51.100.{index}/tcp/4001")
    first, last = "/ip4/198.51.100.0/tcp/4001", "/ip4/198.51.100.9/tcp/4001"
    assert not observed.record("peer-b", first)  # forgotten: peer-b is its only observer now
    assert observed.record("peer-b", last)


@given(st.text(max_size=200), st.lists(st.sampled_from(["a", "b", "c"]), max_size=3))
def test_any_observed_string_is_handled_without_error(addr: str, peers: list[str]) -> None:
    # identify's observed_addr is a peer's bytes: nothing it says may raise.
    observed = ObservedAddrs(addrs_max=2)
    for peer in peers:
        observed.record(peer, addr)
    assert len(observed.confirmed()) <= 2
    assert addresses.parse_ip_tcp(addr) is None or str(addresses.parse_ip_tcp(addr)).startswith("/ip")


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/0.0.0.0/tcp/4001",
        "/ip4/203.0.113.7/tcp/0",
        "/dns4/example.com/tcp/4001",
        "nonsense",
        "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWabc",
        "/ip4/300.1.1.1/tcp/4001",
    ],
)
def test_announce_rejects_what_nobody_could_dial(addr: str) -> None:
    with pytest.raises(ConfigError, match="announce"):
        check_announce_addr(addr, "[node] announce")


def test_announce_accepts_a_dialable_address() -> None:
    check_announce_addr("/ip6/2001:db8::7/tcp/4001", "[node] announce")


def test_no_announce_rejects_what_is_neither_an_address_nor_a_range() -> None:
    with pytest.raises(ConfigError, match=r"no_announce.*ipcidr"):
        check_no_announce(["/ip4/10.0.0.0/ipcidr/99"], "[node] no_announce")


def test_this_machine_has_a_loopback_interface() -> None:
    assert "127.0.0.1" in interface_ips()


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"announce": ["/ip4/10.0.0.1/tcp/0"]}, r"\[node\] announce: '/ip4/10.0.0.1/tcp/0' cannot be dialed"),
        ({"no_announce": ["10.0.0.0/8"]}, r"\[node\] no_announce: '10.0.0.0/8' is neither"),
    ],
)
def test_bad_announce_settings_fail_at_config_load(node: dict[str, list[str]], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse({"node": node}, "config.toml")


def test_the_rendered_config_carries_announce_and_no_announce() -> None:
    rendered = parse(tomllib.loads(render([DEFAULT_LISTEN], "", ["/ip4/203.0.113.7/tcp/4001"])), "init")
    assert rendered.node.announce == ["/ip4/203.0.113.7/tcp/4001"]
    assert rendered.node.no_announce == []


LOOPBACK = "/ip4/127.0.0.1/tcp/4002"
ROUTABLE = "/ip4/10.0.0.5/tcp/4001"


def entry(peer: str, addrs: list[str]) -> list[object]:
    return codec.encode_entry(Entry(peer, State.ALIVE, 1, 1, tuple(addrs)))


def test_a_message_without_loopback_addresses_goes_to_another_host_as_it_is() -> None:
    message = codec.push_pull([entry("a", [ROUTABLE]), entry("b", [])], False, True, False)
    assert codec.for_another_host(message) is message


def test_loopback_addresses_never_reach_another_host_in_entries_or_ping_req_targets() -> None:
    kept = entry("c", [ROUTABLE])
    updates = [entry("a", [LOOPBACK, ROUTABLE]), entry("b", [LOOPBACK]), kept]
    for message in (
        codec.gossip(updates),
        codec.push_pull(updates, True, False, False),
        codec.ping(7, updates),
        codec.ping_req(7, "b", (LOOPBACK,), True, 100, updates),
    ):
        scrubbed = codec.for_another_host(message)
        decoded = codec.decode(scrubbed, 1024)
        entries = decoded.entries if isinstance(decoded, codec.PushPull) else decoded.updates
        assert {e.peer: e.addrs for e in entries} == {"a": (ROUTABLE,), "b": (), "c": (ROUTABLE,)}
        if isinstance(decoded, codec.PingReq):
            assert decoded.addrs == ()
        assert message != scrubbed, "the original, for peers on this host, is left as it was"
        assert kept in scrubbed.get("u", scrubbed.get("e"))


def test_fit_keeps_the_leading_addresses_within_the_count_and_the_bytes() -> None:
    addrs = [f"/ip4/10.0.0.{index}/tcp/4001" for index in range(10)]
    assert addresses.fit(addrs, 8, 10_000) == addrs[:8]
    assert addresses.fit(addrs, 8, 3 * len(addrs[0])) == addrs[:3]
    assert addresses.fit(addrs, 8, len(addrs[0]) - 1) == []
