"""``kill -9`` in the middle of a write storm: every batch reported persisted survives, whole.

The writer (``pyagent.testing.storage_writer``) prints each batch when ``on_persisted`` reports it;
after SIGKILL the store is reopened and every printed batch must be there, and every batch in the
store must be whole (its two keys and its log entry, or none of them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyagent.testing.storage_writer import check_store

WRITERS = 64
VALUE_BYTES = 200


def storm_then_kill(home: Path, persisted_min: int) -> dict[int, int]:
    """Run the writer until it has reported ``persisted_min`` batches, SIGKILL it, return the highest
    reported batch number per writer."""
    command = [sys.executable, "-m", "pyagent.testing.storage_writer", str(home)]
    process = subprocess.Popen(
        [*command, "--writers", str(WRITERS), "--value-bytes", str(VALUE_BYTES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    reported: dict[int, int] = {}
    count = 0
    deadline = time.monotonic() + 60
    try:
        assert process.stdout.readline() == b"ready\n", process.stderr.read() if process.stderr else ""
        while count < persisted_min:
            assert time.monotonic() < deadline, f"only {count} batches persisted in 60 s"
            line = process.stdout.readline()
            assert line, f"the writer stopped: {process.stderr.read() if process.stderr else ''}"
            _, writer, i = line.split()
            reported[int(writer)] = max(reported.get(int(writer), -1), int(i))
            count += 1
        # Mid-storm: writes are in flight when the signal lands.
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        # What it printed before it died was reported durable too.
        for line in process.stdout.read().splitlines():
            if line.startswith(b"persisted "):
                _, writer, i = line.split()
                reported[int(writer)] = max(reported.get(int(writer), -1), int(i))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return reported


@pytest.mark.parametrize("round_", range(3))
def test_kill9_mid_storm_loses_no_persisted_batch(tmp_path: Path, round_: int) -> None:
    # Later rounds kill a store that was already recovered from an earlier kill.
    reported: dict[int, int] = {}
    for _ in range(round_ + 1):
        for writer, i in storm_then_kill(tmp_path, persisted_min=2000 + 1000 * round_).items():
            reported[writer] = max(reported.get(writer, -1), i)
        counts = check_store(tmp_path, WRITERS, VALUE_BYTES)
        for writer, i in reported.items():
            # Batches 0..i were reported; a batch persisted but not yet printed may be there too.
            assert counts[writer] >= i + 1, f"writer {writer}: batch {i} was reported but is lost"
