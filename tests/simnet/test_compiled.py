"""The mypyc-compiled cores are the same protocol: a run gives the same trace hash compiled or not."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from pyagent_simnet import compiled

RUN = ["-m", "pyagent_simnet", "run", "membership-detection", "--seed", "4", "--set", "peers=30"]


def _trace_hash(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, *RUN], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"trace_hash=([0-9a-f]+)", done.stdout)
    assert found, done.stdout
    return found.group(1)


@pytest.mark.skipif(shutil.which("cc") is None, reason="mypyc needs a C compiler (cc) on PATH")
def test_compiled_cores_replay_the_interpreted_trace() -> None:
    target = compiled.build(log=False)
    env = dict(os.environ)
    fast_env = compiled.environ(target, env)
    probe = subprocess.run(
        [sys.executable, "-c", "import pyagent.proto.membership.swim as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        env=fast_env,
        check=True,
    )
    assert probe.stdout.strip().endswith(".so"), probe.stdout
    assert _trace_hash(fast_env) == _trace_hash(env)
    # Built once per version of the sources: asking again finds the same copy.
    assert compiled.build(log=False) == target
