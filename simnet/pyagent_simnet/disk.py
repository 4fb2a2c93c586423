"""Each simulated node's disk: what a write batch goes through between ``Ready.writes`` and ``Persisted``.

A disk holds two states, both ``MemoryStore``s with the exact semantics of ``proto/storage.py``:
- ``durable``: what survives a crash (a power loss);
- ``visible``: ``durable`` plus every batch written since, which is what readers see.

A batch is applied to ``visible`` when the node hands it over, and queued. A ``sync = true`` batch starts
an fsync, which takes a time drawn from ``[disk] sync_latency``; batches handed over while an fsync runs
are made durable together by the next one (group commit), so durability always follows the write order
and the durable state is always a prefix of the writes. When an fsync completes, its batches enter
``durable`` and the node gets ``Persisted`` for each, in order. A ``sync = false`` batch is reported
``Persisted`` as soon as everything before it is (it asked for no fsync), but stays out of ``durable``
until an fsync or the OS's writeback (``[disk] writeback_ms`` after it was written) takes it there.

A crash is a power loss: ``durable`` survives and everything else is gone: the unsynced batches, and every
batch of an fsync that had not completed (a torn batch is simply absent, as batches are atomic). So a
restarted node sees at least every ``sync = true`` batch it was told was ``Persisted``, and possibly less
than it saw ``Persisted`` of its unsynced ones. A wipe loses the durable state too.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from typing import Any

from pyagent.proto.memstore import MemoryStore
from pyagent.proto.storage import WriteBatch
from pyagent_simnet import latency

US_PER_MS = 1_000


class DiskModel:
    """The run's disk parameters and the generator every node's fsync latency is drawn from."""

    def __init__(self, config: dict[str, Any], rng: random.Random, source: str) -> None:
        self.rng = rng
        self.sample_sync_us = latency.build(config["sync_latency"], f"{source}: disk.sync_latency")
        self.writeback_us = int(config["writeback_ms"] * US_PER_MS)


class Disk:
    __slots__ = (
        "batches_durable",
        "batches_lost",
        "batches_written",
        "durable",
        "generation",
        "pending",
        "report_due",
        "reported",
        "sync_wanted",
        "syncing",
        "syncs",
        "visible",
        "wipes",
        "writeback_due",
    )

    def __init__(self) -> None:
        self.durable = MemoryStore()
        self.visible = MemoryStore()
        # Written and not yet durable, in write order.
        self.pending: deque[WriteBatch] = deque()
        # Of ``pending``, counted from the front: how many were reported Persisted (unsynced ones), and
        # how many the running fsync covers (0: none runs).
        self.reported = 0
        self.syncing = 0
        self.sync_wanted = False  # a batch arrived during an fsync that needs one of its own
        self.report_due = False
        self.writeback_due = False
        # Bumps at every crash: disk events scheduled for an earlier generation are void.
        self.generation = 0
        self.wipes = 0
        self.batches_written = self.batches_durable = self.batches_lost = self.syncs = 0

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` to the visible state and queue it. Raises ``ValueError`` for a batch the engine
        refuses (a hole in a log): a component's bug."""
        self.visible.apply(batch)
        self.pending.append(batch)
        self.batches_written += 1

    def start_sync(self) -> None:
        """An fsync starts now: it covers every batch written so far."""
        self.syncing = len(self.pending)
        self.sync_wanted = False
        self.syncs += 1

    def synced(self) -> list[WriteBatch]:
        """The running fsync completed: its batches are durable. Returns the batches now to be reported
        Persisted, in order (those of the fsync not reported yet, then any unsynced ones after them)."""
        group, self.syncing = self.syncing, 0
        already = min(self.reported, group)
        done: list[WriteBatch] = []
        for index in range(group):
            batch = self.pending.popleft()
            self.durable.apply(batch)
            if index >= already:
                done.append(batch)
        self.batches_durable += group
        self.reported -= already
        return done + self.reportable()

    def reportable(self) -> list[WriteBatch]:
        """Unsynced batches that may be reported Persisted now: every one whose predecessors all were."""
        done: list[WriteBatch] = []
        pending = self.pending
        while self.reported < len(pending) and not pending[self.reported].sync:
            done.append(pending[self.reported])
            self.reported += 1
        return done

    def crash(self, wipe: bool) -> None:
        """Power loss: keep ``durable`` (nothing at all with ``wipe``); every pending batch is lost."""
        self.generation += 1
        self.batches_lost += len(self.pending)
        self.pending.clear()
        self.reported = self.syncing = 0
        self.sync_wanted = self.report_due = self.writeback_due = False
        if wipe:
            self.wipes += 1
            self.durable = MemoryStore()
            self.visible = MemoryStore()
        else:
            self.visible = copy.deepcopy(self.durable)
