"""A bad scenario or override is the user's mistake: one line naming key and file, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
name = "tiny"
peers = 3
duration_s = 1
components = ["ping"]
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyagent_simnet", *args, "--interpreted"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('colour = "blue"\n', "colour", "unknown key"),
        ("[network]\nlosss = 0.1\n", "network.losss", "unknown key"),
        ("[churn]\njoin_rate_per_s = -1.0\n", "churn.join_rate_per_s", "at least 0"),
        ("[ping]\nrate_per_s = -0.5\n", "ping.rate_per_s", "at least 0"),
        ("[ping]\nrate = 0.5\n", "ping.rate", "unknown key"),
        ("[ping.checks]\nsuccess_min = 2.0\n", "ping.checks.success_min", "probability"),
        ('[membership]\npreset = "moon"\n', "membership.preset", "unknown value"),
        ("[membership]\nprobe_interval_msec = 5\n", "membership.probe_interval_msec", "unknown key"),
        ('[disk]\nsync_latency = { kind = "constant" }\n', "disk.sync_latency.ms", "required number"),
        ("[transfers]\nwindow_chunks = 0\n", "transfers.window_chunks", "at least 1"),
        ('start = "warm"\n', "start", "unknown value"),
        ('start = "formed"\njoin_spread_s = 5.0\n', "join_spread_s", "starts all at once"),
        ('[network]\nloss = "lots"\n', "network.loss", "expected float"),
        ("[network]\nloss = 1.5\n", "network.loss", "probability"),
        ('[[faults]]\nat_s = 1\naction = "explode"\n', "faults[0].action", "unknown fault action"),
        ('[network]\nlatency = { kind = "gamma", ms = 1 }\n', "network.latency.kind", "unknown latency"),
    ],
)
def test_bad_scenario_files(tmp_path: Path, extra: str, key: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_merge(GOOD, extra), encoding="utf-8")
    result = run_cli("run", str(path), "--seed", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and key in lines[0] and problem in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("peers=many", "peers"),
        ("network.loss=-0.1", "network.loss"),
        ("nosuch=1", "nosuch"),
        ("churn.leave_rate_per_s=-2", "churn.leave_rate_per_s"),
        ("membership.seeds_per_peer=0", "membership.seeds_per_peer"),
        ("membership.checks.detection_bound_s=x", "membership.checks.detection_bound_s"),
        ("nokit.key=1", "nokit.key"),
        ('components=["ping", "teleport"]', "teleport"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, key: str) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(GOOD, encoding="utf-8")
    result = run_cli("run", str(path), "--set", override)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(path) in lines[0]
    assert "Traceback" not in result.stderr


def test_the_good_file_runs(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(GOOD, encoding="utf-8")
    result = run_cli("run", str(path), "--seed", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "report.json").exists()


def test_a_missing_file_is_one_line() -> None:
    result = run_cli("run", "no-such-scenario.toml")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no-such-scenario" in result.stderr


def _merge(base: str, extra: str) -> str:
    # Top-level keys must come before the first table header in TOML.
    return base + extra if extra.startswith("[") else extra + base
