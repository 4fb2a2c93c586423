"""Private meshes end to end: real daemons with swarm.key files, driven through the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, init_home
from pyagent.testing.cli import run_cli

REJECT_WITHIN_S = 2.0


def start_with_key(base: Path, name: str, key: Path | None) -> LocalPeer:
    peer = LocalPeer(name, base / name)
    init_home(peer.home, swarm_key_file=str(key) if key else "")
    peer.start()
    peer.wait_ready()
    return peer


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    paths = (tmp_path / "a.key", tmp_path / "b.key")
    for path in paths:
        result = run_cli(None, "mesh", "new-private", "--out", str(path))
        assert result.returncode == 0, result.stderr
        assert path.stat().st_mode & 0o777 == 0o600
    return paths


@pytest.fixture
def peers() -> Callable[[], list[LocalPeer]]:
    started: list[LocalPeer] = []
    yield lambda: started
    for peer in started:
        peer.stop()


def test_same_key_connects_other_or_no_key_is_rejected_quickly(
    tmp_path: Path, keys: tuple[Path, Path], peers: Callable[[], list[LocalPeer]]
) -> None:
    key_a, key_b = keys
    started = peers()
    member = start_with_key(tmp_path, "member", key_a)
    started.append(member)
    friend = start_with_key(tmp_path, "friend", key_a)
    started.append(friend)
    stranger = start_with_key(tmp_path, "stranger", key_b)
    started.append(stranger)
    public = start_with_key(tmp_path, "public", None)
    started.append(public)

    ok = run_cli(friend.home, "connect", member.addr)
    assert ok.returncode == 0, ok.stderr

    for outsider in (stranger, public):
        for dialer, target in ((outsider, member), (member, outsider)):
            began = time.monotonic()
            result = run_cli(dialer.home, "connect", target.addr)
            elapsed = time.monotonic() - began
            print(f"{dialer.name} -> {target.name}: rejected in {elapsed:.2f} s: {result.stderr.strip()}")
            assert result.returncode == 1
            assert "Traceback" not in result.stderr
            # The CLI's own start-up is inside the measured time, so this bound is generous for the dial.
            assert elapsed < REJECT_WITHIN_S + 1.5
    listed = run_cli(member.home, "peers", "--json")
    assert friend.peer_id in listed.stdout
    assert stranger.peer_id not in listed.stdout and public.peer_id not in listed.stdout


def test_missing_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home, swarm_key_file=str(tmp_path / "nope.key"))
    result = run_cli(home, "daemon")
    assert result.returncode == 2
    assert "nope.key" in result.stderr and "pyagent mesh new-private" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
