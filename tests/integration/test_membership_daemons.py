"""Gossip membership across five real daemon processes on 127.0.0.1, observed through the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from pyagent.localmesh import LocalPeer, converged, init_home, member_states, wait_until
from pyagent.proto import membership
from pyagent.testing.cli import run_cli

COUNT = 5
CONVERGE_TIMEOUT_S = 30.0


def members_json(peer: LocalPeer) -> dict[str, dict]:
    shown = run_cli(peer.home, "members", "--json")
    assert shown.returncode == 0, shown.stderr
    return {m["peer"]: m for m in json.loads(shown.stdout)}


def seen_everywhere(observers: list[LocalPeer], subject: LocalPeer, state: str) -> Callable[[], bool]:
    return lambda: all(member_states(o).get(subject.peer_id) == state for o in observers)


def test_crash_is_detected_and_restart_rejoins(mesh: Callable[..., list[LocalPeer]]) -> None:
    peers = mesh(COUNT)
    took = wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence of 5 daemons")
    print(f"\n5 daemons converged in {took:.2f} s")
    table = run_cli(peers[0].home, "members")
    assert table.stdout.count(" alive ") == COUNT, table.stdout

    victim, survivors = peers[-1], peers[:-1]
    incarnation_before = members_json(survivors[0])[victim.peer_id]["incarnation"]
    bound_s = membership.LAN.dead_everywhere_bound_ms(COUNT) / 1000
    victim.kill()
    suspect_s = wait_until(seen_everywhere(survivors, victim, "suspect"), bound_s, "suspicion everywhere")
    dead_s = wait_until(seen_everywhere(survivors, victim, "dead"), bound_s, "death everywhere") + suspect_s
    print(
        f"kill -9: suspect everywhere after {suspect_s:.2f} s, dead everywhere after {dead_s:.2f} s "
        f"(config bound {bound_s:.0f} s)"
    )

    victim.start()  # same home, so the same identity
    rejoin_s = wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "rejoin after restart")
    print(f"restart: alive everywhere again after {rejoin_s:.2f} s")
    for survivor in survivors:
        assert members_json(survivor)[victim.peer_id]["incarnation"] > incarnation_before


def test_graceful_leave_is_left_not_dead(mesh: Callable[..., list[LocalPeer]]) -> None:
    peers = mesh(COUNT)
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence of 5 daemons")
    # Any member can be pinged by id: the daemon dials the addresses gossip gave for it if need be.
    for source, target in ((peers[2], peers[4]), (peers[3], peers[1])):
        pinged = run_cli(source.home, "ping", target.peer_id, "-c", "1")
        assert pinged.returncode == 0, pinged.stderr
    leaver, stayers = peers[1], [p for p in peers if p is not peers[1]]
    began = time.monotonic()
    result = run_cli(leaver.home, "leave")
    assert result.returncode == 0, result.stderr
    wait_until(seen_everywhere(stayers, leaver, "left"), 10, "leave seen everywhere")
    elapsed = time.monotonic() - began
    print(f"\n`pyagent leave` returned and its leave was seen everywhere {elapsed:.2f} s after it was run")
    assert leaver.wait_stopped() == 0
    # It stays "left": a departed member must never turn into a false "dead".
    time.sleep(membership.LAN.suspicion_max_ms(COUNT) / 1000 / 4)
    assert all(member_states(s)[leaver.peer_id] == "left" for s in stayers)


def test_bootstrap_failures_are_reported_with_their_reason(mesh: Callable[..., list[LocalPeer]]) -> None:
    (alone,) = mesh(1)
    wrong_id = alone.addr.rsplit("/p2p/", 1)[0] + "/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
    dead_port = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
    joiner = LocalPeer(
        "joiner", alone.home.parent / "joiner", extra_args=["--bootstrap", wrong_id, "--bootstrap", dead_port]
    )
    init_home(joiner.home)
    joiner.start()
    try:
        joiner.wait_ready()
        wait_until(
            lambda: "wrong-peer-id" in joiner.log_text() and "unreachable" in joiner.log_text(),
            20,
            "join failure reasons in the log",
        )
    finally:
        assert joiner.stop() == 0


def test_first_node_restarted_without_bootstrap_rejoins_from_its_address_book(
    mesh: Callable[..., list[LocalPeer]],
) -> None:
    peers = mesh(3)
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence of 3 daemons")
    first, others = peers[0], peers[1:]
    assert "--bootstrap" not in first.extra_args  # it started the mesh: nothing to bootstrap from
    incarnation_before = members_json(first)[first.peer_id]["incarnation"]

    first.kill()
    first.start()
    first.wait_ready()
    rejoin_s = wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "rejoin from the address book")
    print(f"\nrestarted first node rejoined its mesh from its address book in {rejoin_s:.2f} s")
    assert "rejoining the mesh from the address book" in first.log_text()
    assert "started a new mesh" not in first.log_text().split("rejoining the mesh")[-1]
    # A restarted peer never reuses an old incarnation, as it sees itself and as the others see it.
    assert members_json(first)[first.peer_id]["incarnation"] > incarnation_before
    for other in others:
        assert members_json(other)[first.peer_id]["incarnation"] > incarnation_before


def test_peers_show_probe_rtt_and_our_agent_without_any_ping(mesh: Callable[..., list[LocalPeer]]) -> None:
    peers = mesh(3)
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence of 3 daemons")
    others = {p.peer_id for p in peers[1:]}

    def timed_by_probes() -> bool:
        shown = run_cli(peers[0].home, "peers", "--json")
        assert shown.returncode == 0, shown.stderr
        rows = {p["peer"]: p for p in json.loads(shown.stdout) if p["peer"] in others}
        return set(rows) == others and all(row["rtt_us"] for row in rows.values())

    # No `pyagent ping` is run in this test: the RTT comes from membership's probe acks.
    wait_until(timed_by_probes, 20, "an RTT for every connected member")
    shown = json.loads(run_cli(peers[0].home, "peers", "--json").stdout)
    for row in shown:
        assert row["agent_version"].startswith("pyagent/"), row
        assert 0 < row["rtt_us"] < 1_000_000, row
    members = members_json(peers[0])
    assert all(members[peer]["rtt_us"] for peer in others)
    table = run_cli(peers[0].home, "peers").stdout
    assert " ms " in table and "pyagent/" in table and "py-libp2p" not in table, table
