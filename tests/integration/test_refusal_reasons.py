"""Each refusal (wrong key, no key, allow-list, version mismatch) is reported to both sides with the
reason docs/meshes.md gives: the dialer's error names it, and the listener counts it in
``connections_refused`` by reason and logs it in one line, with no library error dump (issue 15)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, init_home, stop_all, wait_until
from pyagent.testing.cli import run_cli

# Stands in for a PyAgent release whose membership protocol is incompatible with ours: imported first
# by the daemon's interpreter (Python runs a ``sitecustomize`` module found on its path at start-up).
FUTURE_MEMBERSHIP = "/pyagent/membership/2.0.0"
FUTURE_SITECUSTOMIZE = f"""
from pyagent.proto import membership
from pyagent.proto.membership import codec, swim

codec.PROTOCOL_ID = membership.PROTOCOL_ID = swim.Membership.protocol_id = {FUTURE_MEMBERSHIP!r}
"""
REFUSAL_WAIT_S = 20
# What py-libp2p logged for every refusal before issue 15: several lines at error level.
LIBRARY_ERROR_MARK = " error   libp2p."


def refused(peer: LocalPeer, reason: str) -> int:
    stats = json.loads(run_cli(peer.home, "stats", "--json").stdout)
    return int(stats.get(f"connections_refused_by{{label={reason}}}", 0))


def log_lines(peer: LocalPeer, text: str) -> int:
    return sum(text in line for line in peer.log_text().splitlines())


@dataclass
class Mesh:
    keyed: LocalPeer  # in the private mesh of key A
    other: LocalPeer  # in the private mesh of key B
    public: LocalPeer  # no key
    guard: LocalPeer  # no key, and an allow-list that names nobody here
    base: Path


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("refusals")
    keys = [base / "a.key", base / "b.key"]
    for key in keys:
        assert run_cli(None, "mesh", "new-private", "--out", str(key)).returncode == 0
    started: list[LocalPeer] = []
    try:
        for name, key in (("keyed", keys[0]), ("other", keys[1]), ("public", None), ("guard", None)):
            peer = LocalPeer(name, base / name)
            init_home(peer.home, swarm_key_file=str(key) if key else "")
            if name == "guard":
                config = peer.home / "config.toml"
                nobody = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                config.write_text(config.read_text().replace("allow_list = []", f'allow_list = ["{nobody}"]'))
            peer.start()
            started.append(peer)
        for peer in started:
            peer.wait_ready()
        yield Mesh(*started, base=base)
    finally:
        stop_all(started)


CONNECT_CASES = [
    # (dialer, listener, the dialer's reason, the listener's counter label, the listener's log line)
    ("other", "keyed", "key-mismatch", "key-mismatch", "its bytes do not decrypt under our key"),
    ("public", "keyed", "key-mismatch", "key-mismatch", "it speaks plaintext multistream-select"),
    ("keyed", "public", "key-mismatch", "key-mismatch", "its first bytes are not multistream-select"),
    ("public", "guard", "refused", "allow-list", "not on the allow-list"),
]


@pytest.mark.parametrize(("dialer", "listener", "reason", "label", "logged"), CONNECT_CASES)
def test_refused_connect_names_the_reason_on_both_sides(
    nodes: Mesh, dialer: str, listener: str, reason: str, label: str, logged: str
) -> None:
    source, target = getattr(nodes, dialer), getattr(nodes, listener)
    counted_before, logged_before = refused(target, label), log_lines(target, logged)
    result = run_cli(source.home, "connect", target.addr)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f": {reason}: " in lines[0], result.stderr
    wait_until(lambda: refused(target, label) == counted_before + 1, REFUSAL_WAIT_S, "the refusal is counted")
    assert log_lines(target, logged) == logged_before + 1
    for peer in (source, target):
        assert LIBRARY_ERROR_MARK not in peer.log_text() and "Traceback" not in peer.log_text()


def test_version_mismatch_is_logged_by_the_joiner_and_counted_by_the_seed(nodes: Mesh) -> None:
    site = nodes.base / "future-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FUTURE_SITECUSTOMIZE)
    future = LocalPeer("future", nodes.base / "future", extra_args=["--bootstrap", nodes.public.addr])
    init_home(future.home)
    # LocalPeer passes its own environment on to the daemon.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(site))
        future.start()
    try:
        future.wait_ready()
        wait_until(lambda: refused(nodes.public, "version-mismatch") > 0, REFUSAL_WAIT_S, "the seed refuses")
        joiner_says = (
            f"version mismatch: it speaks /pyagent/membership/1.0.0, this node speaks {FUTURE_MEMBERSHIP}"
        )
        wait_until(lambda: joiner_says in future.log_text(), REFUSAL_WAIT_S, "the joiner logs why")
        seed_says = (
            f"refusing connection from {future.peer_id}: version mismatch: it speaks {FUTURE_MEMBERSHIP}"
        )
        assert log_lines(nodes.public, seed_says) == refused(nodes.public, "version-mismatch")
        assert future.peer_id not in {member["peer"] for member in nodes.public.call("members")}
        for peer in (future, nodes.public):
            assert LIBRARY_ERROR_MARK not in peer.log_text() and "Traceback" not in peer.log_text()
    finally:
        future.stop()
