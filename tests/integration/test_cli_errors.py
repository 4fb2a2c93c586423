"""Every input or configuration error is one line on stderr and exit code 2 (issue 16), with the global
flags given after the subcommand, which the CLI accepts as well as before it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, init_home

# A valid peer id (an Ed25519 key's identity multihash) with no daemon behind it.
PEER_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def run_after(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pyagent ARGS --home HOME``: the global flag after the subcommand."""
    return subprocess.run(
        [sys.executable, "-m", "pyagent.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPeer]:
    home = tmp_path_factory.mktemp("errors") / "home"
    init_home(home)
    peer = LocalPeer("errors", home)
    peer.start()
    try:
        peer.wait_ready()
        yield peer
    finally:
        peer.stop()


CASES = [
    (["mesh", "new-private", "--out", "/nonexistent/dir/x.key"], "does not exist; create it first"),
    (["init", "--listen", "bogus"], "'bogus' is not a multiaddr"),
    (["init", "--listen", "/ip4/999.0.0.1/tcp/1"], "is not a multiaddr"),
    (["daemon", "--bootstrap", "foo"], "--bootstrap: 'foo' is not a multiaddr"),
    (["daemon", "--bootstrap", f"/ip4/999.0.0.1/tcp/1/p2p/{PEER_ID}"], "is not a valid multiaddr"),
    (["daemon", "--listen", "bogus"], "'bogus' is not a multiaddr"),
    (
        ["daemon", "--announce", "/ip4/0.0.0.0/tcp/4001"],
        "--announce: '/ip4/0.0.0.0/tcp/4001' cannot be dialed",
    ),
    (
        ["init", "--announce", "/dns4/example.com/tcp/1"],
        "--announce: '/dns4/example.com/tcp/1' is not an address",
    ),
    (["connect", f"/ip4/999.0.0.1/tcp/1/p2p/{PEER_ID}"], "is not a valid multiaddr"),
    (["connect", "/ip4/1.2.3.4/tcp/1/p2p/notapeer"], "'notapeer' is not a valid peer id"),
    (["ping", "notapeer"], "'notapeer' is not a valid peer id"),
    (["ping", "x", "-c", "0"], "--count must be at least 1"),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(args)[:40] for args, _ in CASES])
def test_each_error_is_one_line_and_exit_2(daemon: LocalPeer, args: list[str], expected: str) -> None:
    # init needs a fresh home; the others run against the daemon's (the daemon commands are refused
    # before anything starts, so they never meet the running one).
    home = daemon.home.parent / "fresh" if args[0] == "init" else daemon.home
    result = run_after(home, *args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "daemon ready" not in result.stdout + result.stderr
    if args[0] == "init":
        assert not (home / "identity.key").exists()


def test_global_flags_work_after_the_subcommand(daemon: LocalPeer) -> None:
    result = run_after(daemon.home, "id", "--json")
    assert result.returncode == 0 and daemon.peer_id in result.stdout
    assert run_after(daemon.home, "plugins", "--no-plugins").returncode == 0
