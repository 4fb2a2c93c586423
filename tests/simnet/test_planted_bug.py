"""A planted bug is caught by a checker, and the replay command the run prints reproduces it exactly."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "planted.toml"
PLANTED_RUN = [
    sys.executable,
    "-m",
    "pyagent_simnet",
    "run",
    str(SCENARIO),
    "--seed",
    "7",
    "--set",
    "peers=16",
]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # The planted component is importable as `planted` from this directory, as a user's plugin would be
    # from their own path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)


def trace_hash(stdout: str) -> str:
    found = re.search(r"trace_hash=([0-9a-f]+)", stdout)
    assert found, stdout
    return found.group(1)


def test_the_checker_catches_the_planted_bug_and_the_replay_reproduces_it() -> None:
    # Interpreted, so that the two runs' stderr cannot differ by a line about building compiled cores.
    first = run([*PLANTED_RUN, "--interpreted"])
    assert first.returncode == 1, first.stdout + first.stderr
    assert "safety:" in first.stderr and "false positives" in first.stderr
    replay_lines = [line for line in first.stderr.splitlines() if line.startswith("replay: ")]
    assert len(replay_lines) == 1
    command = shlex.split(replay_lines[0].removeprefix("replay: "))
    assert command[:3] == ["python", "-m", "pyagent_simnet"]
    assert "--seed" in command and "peers=16" in command and "--interpreted" in command

    second = run([sys.executable, *command[1:]])
    assert second.returncode == first.returncode
    assert trace_hash(second.stdout) == trace_hash(first.stdout)
    assert second.stderr == first.stderr


def test_without_the_planted_component_the_same_run_is_clean() -> None:
    clean = run([*PLANTED_RUN, "--set", "extra_components=[]", "--interpreted"])
    assert clean.returncode == 0, clean.stdout + clean.stderr
