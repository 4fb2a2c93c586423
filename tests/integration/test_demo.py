"""The quick start's first command runs ``pyagent demo``: run it as a user would, on its defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_the_demo_shows_every_part_working() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyagent.cli", "demo", "--duration", "10"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for line in (
        "membership converged",
        "none lost",
        "the merged adapter beats every peer's locally trained one on held-out data",
        "dead everywhere",
        "demo finished: the mesh formed",
    ):
        assert line in out, out
