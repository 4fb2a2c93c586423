"""Joining at runtime (`pyagent join`), rejoining after a restart, and the warning of a node left alone,
with real daemons on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pyagent.config import CONFIG_FILE
from pyagent.localmesh import LocalPeer, converged, init_home, wait_until
from pyagent.proto import membership
from pyagent.testing.cli import run_cli

CONVERGE_TIMEOUT_S = 30.0
ISOLATION_WARNING_MS = 2_000
ALONE_LINE = "no other member seen for"
PROBE_INTERVAL_S = membership.LAN.probe_interval_ms / 1000


def override_config(home: Path, section: str, **values: int) -> None:
    """Set keys of one section of the config.toml that ``init_home`` wrote, replacing those it has."""
    config = home / CONFIG_FILE
    text = config.read_text()
    header = f"[{section}]\n"
    assert text.count(header) == 1
    for key, value in values.items():
        text, replaced = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        if not replaced:
            text = text.replace(header, f"{header}{key} = {value}\n")
    config.write_text(text)


def alone_peer(home: Path, name: str) -> LocalPeer:
    """A daemon with no bootstrap list that warns after ISOLATION_WARNING_MS alone (60 s by default)."""
    init_home(home)
    override_config(home, "membership", isolation_warning_ms=ISOLATION_WARNING_MS)
    peer = LocalPeer(name, home)
    peer.start()
    peer.wait_ready()
    return peer


def test_two_meshes_formed_apart_merge_after_pyagent_join(mesh: Callable[..., list[LocalPeer]]) -> None:
    left, right = mesh(2), mesh(2)
    wait_until(lambda: converged(left) and converged(right), CONVERGE_TIMEOUT_S, "two separate meshes")
    # A connection alone merges nothing: each mesh still sees only its own members.
    connected = run_cli(left[0].home, "connect", right[0].addr)
    assert connected.returncode == 0, connected.stderr
    assert not converged(left + right)

    joined = run_cli(left[1].home, "join", right[1].addr)
    assert joined.returncode == 0, joined.stderr
    assert f"joined through {right[1].peer_id}" in joined.stdout
    took = wait_until(lambda: converged(left + right), CONVERGE_TIMEOUT_S, "the merged mesh")
    print(f"\n2+2 daemons formed apart: every member lists every other {took:.2f} s after `pyagent join`")


def test_join_input_errors_are_one_line_with_exit_code_2(mesh: Callable[..., list[LocalPeer]]) -> None:
    (peer,) = mesh(1)
    bad_id = "/ip4/127.0.0.1/tcp/4001/p2p/not-a-peer-id"
    for args, says in (
        (["join", "127.0.0.1:4001"], "is not a multiaddr with a peer id"),
        (["join", bad_id], "is not a valid peer id"),
        (["join", peer.addr], "is this node itself"),
        (["join"], "the following arguments are required"),
    ):
        result = run_cli(peer.home, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    unreachable = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
    result = run_cli(peer.home, "join", unreachable)
    assert result.returncode == 1 and "unreachable" in result.stderr, result.stderr


def test_a_node_alone_warns_in_its_log_and_members_until_it_joins(
    mesh: Callable[..., list[LocalPeer]], tmp_path: Path
) -> None:
    loner = alone_peer(tmp_path / "loner", "loner")
    (other,) = mesh(1)
    wait_until(lambda: ALONE_LINE in run_cli(loner.home, "members").stderr, 15, "the warning in members")
    shown = run_cli(loner.home, "members", "--json")
    assert shown.returncode == 0 and shown.stderr.startswith("warning: no other member seen for")
    assert "pyagent join" in shown.stderr
    # One line in the log, not one per probe tick: wait a few more ticks and count.
    wait_until(lambda: ALONE_LINE in loner.log_text(), 5, "the warning in the log")
    time.sleep(5 * PROBE_INTERVAL_S)
    assert loner.log_text().count(ALONE_LINE) == 1

    joined = run_cli(loner.home, "join", other.addr)
    assert joined.returncode == 0, joined.stderr
    members = run_cli(loner.home, "members")
    assert members.returncode == 0 and members.stderr == "", members.stderr
    wait_until(lambda: "a member is back after" in loner.log_text(), 5, "the end of the warning in the log")
    assert loner.stop() == 0


def test_a_first_node_stopped_and_restarted_rejoins_its_old_mesh(
    mesh: Callable[..., list[LocalPeer]],
) -> None:
    """Stopped gracefully (its mesh holds it "left"), the first node, which has no bootstrap list, finds
    its mesh again through its address book rather than starting a second one."""
    peers = mesh(3)
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence of 3 daemons")
    first = peers[0]
    assert "--bootstrap" not in first.extra_args
    assert first.stop() == 0
    first.start()
    first.wait_ready()
    took = wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "rejoin after a graceful restart")
    print(f"\nfirst node stopped and restarted: in its old mesh again after {took:.2f} s")
    assert run_cli(first.home, "members").stderr == ""


def test_a_restarted_first_node_whose_mesh_was_out_of_reach_rejoins_once_it_is_back(
    mesh: Callable[..., list[LocalPeer]],
) -> None:
    """The first node restarts while its mesh cannot answer (here its members are paused): it runs alone,
    and nobody calls it back (they hold it "left", and it listens on a new port), so it must keep trying
    its address book itself."""
    peers = mesh(3)
    wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "convergence of 3 daemons")
    first, others = peers[0], peers[1:]
    assert first.stop() == 0
    # Short dial deadlines, so that its rounds against the paused members fail in seconds.
    override_config(first.home, "host", dial_timeout_ms=1_000, upgrade_timeout_ms=1_000)
    paused = [other.process.pid for other in others if other.process is not None]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        first.start()
        first.wait_ready()
        wait_until(lambda: "running alone" in first.log_text(), 60, "the failed rejoin")
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    took = wait_until(lambda: converged(peers), 60, "the rejoin once the mesh is back")
    print(f"\nfirst node back in its old mesh {took:.2f} s after the mesh could answer again")
    assert "rejoined the mesh from the address book" in first.log_text()
