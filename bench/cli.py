"""Wall time of a CLI start, as an operator feels it (issue 16: under 0.2 s on this machine).

    .venv/bin/python bench/cli.py            # median of 10 runs each
    .venv/bin/python bench/cli.py --runs 30

Measures, each in a fresh process (``python -m pyagent.cli``, as the ``pyagent`` script runs it):
``pyagent --help``, ``pyagent id`` with no daemon running (exit 1 after one line), and ``pyagent stats``
against a daemon started for the benchmark on 127.0.0.1 (``pyagent.localmesh``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyagent.localmesh import LocalPeer, init_home


def wall_s(args: list[str], expect: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pyagent.cli", *args], capture_output=True, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - started
    if result.returncode != expect:
        raise SystemExit(f"pyagent {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
    return elapsed


def report(name: str, samples: list[float]) -> None:
    print(
        f"{name:<28} median {statistics.median(samples) * 1000:6.0f} ms   "
        f"min {min(samples) * 1000:6.0f} ms   max {max(samples) * 1000:6.0f} ms   (n={len(samples)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command (default 10)")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="pyagent-bench-cli-") as tmp:
        idle = Path(tmp) / "idle"
        init_home(idle)
        report("pyagent --help", [wall_s(["--help"], 0) for _ in range(runs)])
        report("pyagent id (no daemon)", [wall_s(["--home", str(idle), "id"], 0) for _ in range(runs)])
        home = Path(tmp) / "node"
        init_home(home)
        peer = LocalPeer("bench", home)
        peer.start()
        try:
            peer.wait_ready()
            report("pyagent stats (daemon)", [wall_s(["--home", str(home), "stats"], 0) for _ in range(runs)])
        finally:
            peer.stop()


if __name__ == "__main__":
    main()
