"""An allow-list refuses other peers at connect: they never show up in peers or members."""

from __future__ import annotations

import json
from pathlib import Path

from pyagent.localmesh import LocalPeer, init_home, member_states, stop_all, wait_until
from pyagent.testing.cli import run_cli


def allow_only(home: Path, peer_ids: list[str]) -> None:
    config = home / "config.toml"
    config.write_text(config.read_text().replace("allow_list = []", f"allow_list = {json.dumps(peer_ids)}"))


def refused_connections(peer: LocalPeer) -> int:
    return int(json.loads(run_cli(peer.home, "stats", "--json").stdout)["connections_refused"])


def test_peers_off_the_list_are_refused_and_never_become_members(tmp_path: Path) -> None:
    guard, friend, stranger = (LocalPeer(name, tmp_path / name) for name in ("guard", "friend", "stranger"))
    # Identities first, so that each allow-list can name the other node.
    guard_id, friend_id = init_home(guard.home), init_home(friend.home)
    init_home(stranger.home)
    allow_only(guard.home, [friend_id])
    allow_only(friend.home, [guard_id])
    started: list[LocalPeer] = []
    try:
        guard.start()
        guard.wait_ready()
        started.append(guard)
        for joiner in (friend, stranger):
            joiner.extra_args = ["--bootstrap", guard.addr]
            joiner.start()
            joiner.wait_ready()
            started.append(joiner)

        wait_until(lambda: member_states(guard).get(friend.peer_id) == "alive", 20, "the friend joins")
        wait_until(lambda: refused_connections(guard) > 0, 20, "the stranger's connection is refused")
        run_cli(stranger.home, "connect", guard.addr)  # tries again by hand: refused again
        assert stranger.peer_id not in member_states(guard)
        assert stranger.peer_id not in {p["peer"] for p in guard.call("peers")}
        assert "not on the allow-list" in guard.log_text()
        # The friend has its own list: dialing the stranger is refused before any byte is sent.
        refused = run_cli(friend.home, "connect", stranger.addr)
        assert refused.returncode == 1 and "allow-list" in refused.stderr
        assert stranger.peer_id not in member_states(friend)
    finally:
        stop_all(started)
