"""The mypyc-compiled cores are the same protocol, and ``run`` uses them by default.

A run gives the same trace hash compiled or not; without ``--interpreted`` the CLI builds them (once per
source version) and re-executes itself on them; when they cannot be built it says so and runs
interpreted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent.errors import ConfigError
from pyagent_simnet import cli, compiled

RUN = ["run", "membership-detection", "--seed", "4", "--set", "peers=30"]
PYAGENT = Path(sys.executable).parent / "pyagent"
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="mypyc needs a C compiler (cc) on PATH")


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    found = re.search(r"cores=(\w+) .*trace_hash=([0-9a-f]+)", done.stdout)
    assert found, done.stdout
    return found.group(1), found.group(2)


@needs_cc
def test_compiled_cores_replay_the_interpreted_trace_and_are_the_default() -> None:
    target = compiled.build(log=False)
    probe = subprocess.run(
        [sys.executable, "-c", "import pyagent.proto.membership.swim as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        env=compiled.environ(target, dict(os.environ)),
        check=True,
    )
    assert probe.stdout.strip().endswith(".so"), probe.stdout
    interpreted = _run([sys.executable, "-m", "pyagent_simnet", *RUN, "--interpreted"])
    by_default = _run([sys.executable, "-m", "pyagent_simnet", *RUN])
    through_the_daemons_cli = _run([str(PYAGENT), "simnet", *RUN])
    assert interpreted[0] == "interpreted"
    assert by_default[0] == through_the_daemons_cli[0] == "compiled"
    assert interpreted[1] == by_default[1] == through_the_daemons_cli[1]
    # Built once per version of the sources: asking again finds the same copy.
    assert compiled.build(log=False) == target


def test_when_the_cores_cannot_be_built_the_run_says_so_and_stays_interpreted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(log: bool = True) -> Path:
        raise ConfigError("mypyc failed (is a C compiler installed?): no cc")

    monkeypatch.setattr(compiled, "build", fail)
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("re-executed without compiled cores"))
    cli._use_compiled_cores(argparse.Namespace(interpreted=False))
    assert "running on the interpreted cores: mypyc failed" in capsys.readouterr().err
