"""A plugin that fails to load cannot lock the operator out (issue 16).

tests/brokenkit holds two test-only plugins, never installed, found through PYTHONPATH as daemonkit is:
``typo`` (a misspelled hook, refused by pluggy) and ``failing`` (a failing import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, init_home
from pyagent.testing.cli import run_cli

BROKENKIT = Path(__file__).resolve().parents[1] / "brokenkit"
BROKEN = ("failing", "typo")


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Put the broken plugins on PYTHONPATH; each writes its name to the returned file when imported."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(BROKENKIT), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.delenv("PYAGENT_PLUGINS_DISABLED", raising=False)
    path = tmp_path / "imported"
    monkeypatch.setenv("BROKENKIT_IMPORTED", str(path))
    return path


def imported(marker: Path) -> set[str]:
    return set(marker.read_text().split()) if marker.exists() else set()


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pyagent: warning:")]


def plugin_status(home: Path, *flags: str) -> dict[str, dict[str, object]]:
    result = run_cli(home, *flags, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    return {info["name"]: info for info in json.loads(result.stdout)}


def test_help_and_builtin_commands_work_and_import_no_plugin(marker: Path, tmp_path: Path) -> None:
    top = run_cli(tmp_path, "--help")
    assert top.returncode == 0 and top.stderr == ""
    assert "failing" in top.stdout and "typo" in top.stdout  # named from metadata, not imported
    no_daemon = run_cli(tmp_path, "peers")
    assert no_daemon.returncode == 1 and len(no_daemon.stderr.splitlines()) == 1
    assert imported(marker) == set()


def test_plugins_shows_each_broken_plugin_as_failed_with_its_reason(marker: Path, tmp_path: Path) -> None:
    infos = plugin_status(tmp_path)
    assert infos["hello"]["status"] == "loaded"
    assert infos["typo"]["status"] == "failed" and "pyagent_peer_conected" in str(infos["typo"]["error"])
    assert infos["failing"]["status"] == "failed"
    assert "pyagent_brokenkit_missing_dependency" in str(infos["failing"]["error"])
    table = run_cli(tmp_path, "plugins")
    assert table.returncode == 0 and "failed" in table.stdout and table.stderr == ""


def test_a_plugin_command_still_works_with_one_warning_line_per_broken_plugin(
    marker: Path, tmp_path: Path
) -> None:
    result = run_cli(tmp_path, "hello", "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines == warnings(result.stderr) and len(lines) == len(BROKEN)
    assert all(any(f"'{name}'" in line for line in lines) for name in BROKEN)


@pytest.mark.parametrize("how", ["config", "env", "flag"])
def test_disabled_plugins_are_never_imported(
    marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    home = tmp_path / "home"
    init_home(home)
    flags: list[str] = []
    if how == "config":
        config = (home / "config.toml").read_text()
        (home / "config.toml").write_text(config.replace("disabled = []", 'disabled = ["typo", "failing"]'))
    elif how == "env":
        monkeypatch.setenv("PYAGENT_PLUGINS_DISABLED", "typo,failing")
    else:
        flags = ["--no-plugins"]
    infos = plugin_status(home, *flags)
    assert {infos[name]["status"] for name in BROKEN} == {"disabled"}
    assert infos["hello"]["status"] == ("disabled" if how == "flag" else "loaded")
    result = run_cli(home, "simnet", "--help", *flags) if how != "flag" else run_cli(home, "id", *flags)
    assert warnings(result.stderr) == []
    assert imported(marker) == set()


def test_the_daemon_starts_and_logs_each_broken_plugin_once(marker: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    peer = LocalPeer("broken", home)
    peer.start()
    try:
        peer.wait_ready()
        names = {info["name"]: info["status"] for info in peer.call("plugins")}
        assert names["hello"] == "loaded" and names["typo"] == names["failing"] == "failed"
    finally:
        assert peer.stop() == 0
    log = peer.log_text()
    for name in BROKEN:
        assert log.count(f"plugin '{name}' (from pyagent-brokenkit 0.1) failed to load") == 1


def test_the_daemon_refuses_to_start_without_a_required_plugin(marker: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    config = (home / "config.toml").read_text()
    (home / "config.toml").write_text(config.replace("required = []", 'required = ["typo"]'))
    result = subprocess.run(
        [sys.executable, "-m", "pyagent.cli", "--home", str(home), "daemon"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'typo'" in lines[0] and "required" in lines[0], result.stderr
