"""A planted bug: the KV store acknowledges before fsync.

A test-only component patches its sibling ``kv`` (``RaftKv``) so that every write batch it returns asks
for no fsync (``sync=False``). simnet's disk then reports such a batch ``Persisted`` at once, while it
stays out of the durable state until the OS's writeback (``[disk] writeback_ms``) or some other fsync
takes it there. So a follower acknowledges log entries, a voter grants votes, and a leader answers clients
for writes that a power loss erases: after a crash, a committed write can vanish from a majority, and a
read sees the value from before it. The kv kit's linearizability check must catch that.

Planted as a buggy plugin sharing the process could do it: by wrapping the sibling's ``_drain`` (the one
place it turns the driver's Ready into write batches) on the instance.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pyagent.proto import kv
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.ready import Ready


class AckBeforeFsync(Component):
    name: ClassVar[str] = "ack-before-fsync"

    def __init__(self, store: kv.RaftKv) -> None:
        self.batches_unsynced = 0
        honest = store._drain

        def drain(now_us: int, out: Ready) -> None:
            before = len(out.writes)
            honest(now_us, out)
            for index in range(before, len(out.writes)):
                batch = out.writes[index]
                if batch.component == kv.NAME and batch.sync:
                    out.writes[index] = dataclasses.replace(batch, sync=False)
                    self.batches_unsynced += 1

        store._drain = drain  # type: ignore[method-assign]


def factory(ctx: NodeContext) -> Component:
    store = ctx.sibling(kv.NAME)
    assert isinstance(store, kv.RaftKv)
    return AckBeforeFsync(store)
