"""Run the real ``pyagent`` command line in a subprocess, as an operator would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(home: Path | None, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    prefix = ["--home", str(home)] if home is not None else []
    return subprocess.run(
        [sys.executable, "-m", "pyagent.cli", *prefix, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
