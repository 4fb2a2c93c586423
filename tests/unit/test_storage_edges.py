"""Edge cases of log ops where the in-memory engine (simnet, harnesses) and the daemon's raft-engine store
must agree: each op is judged against what the ops before it in the same batch made of the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyagent._core import Store
from pyagent.node.storage import encode
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.storage import LogAppend, LogCompact, LogTruncate, Op, WriteBatch

TEN = LogAppend("raft", 1, tuple(b"e%d" % index for index in range(1, 11)))


@pytest.mark.parametrize(
    ("ops", "accepted"),
    [
        ((LogAppend("raft", 1, (b"x",)),), True),  # overwrite from the first entry
        ((LogCompact("raft", 5), LogAppend("raft", 3, (b"x",))), False),  # below the first entry
        ((LogTruncate("raft", 5), LogAppend("raft", 8, (b"x",))), False),  # a hole after the truncate
        ((LogTruncate("raft", 5), LogAppend("raft", 5, (b"x",))), True),
        ((LogCompact("raft", 20), LogAppend("raft", 30, (b"x",))), True),  # the compact emptied it
        ((LogAppend("raft", 12, (b"x",)),), False),
    ],
)
def test_both_engines_judge_log_ops_alike(tmp_path: Path, ops: tuple[Op, ...], accepted: bool) -> None:
    memory = MemoryStore()
    memory.apply(WriteBatch("c", (TEN,)))
    store = Store(str(tmp_path / "store"))
    store.write([encode(WriteBatch("c", (TEN,)))], True)
    batch = WriteBatch("c", ops)
    outcomes = []
    for write in (lambda: memory.apply(batch), lambda: store.write([encode(batch)], True)):
        try:
            write()
        except ValueError:
            outcomes.append(False)
        else:
            outcomes.append(True)
    assert outcomes == [accepted, accepted]
    if accepted:
        bounds = memory.reader("c").log_bounds("raft")
        assert bounds == store.log_bounds("c", "raft")
        assert bounds is not None
        lo, hi = bounds
        assert memory.reader("c").log_entries("raft", lo, hi + 1) == store.log_entries(
            "c", "raft", lo, hi + 1
        )
    store.close()
