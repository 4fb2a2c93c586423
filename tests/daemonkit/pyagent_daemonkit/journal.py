"""``journal``: appends batches of records and acknowledges each only once it is durable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, Started
from pyagent.proto.ready import Ready, Reply
from pyagent.proto.storage import Put, StorageReader, WriteBatch

RECORD_PREFIX = b"record/"
RECORDS_PER_BATCH = 4
SCAN_MAX = 1_000_000


@dataclass(frozen=True)
class Append:
    """Write one synced batch of RECORDS_PER_BATCH records of ``size`` bytes; reply with its sequence
    number once durable."""

    size: int


@dataclass(frozen=True)
class ReadAll:
    """Reply with {sequence number: number of its records found}."""


class Journal(Component):
    name: ClassVar[str] = "journal"
    command_types: ClassVar[tuple[type, ...]] = (Append, ReadAll)

    def __init__(self, storage: StorageReader) -> None:
        self._storage = storage
        self._next = 0

    def on_started(self, event: Started, now_us: int, out: Ready) -> None:
        # Sequence numbers continue after the largest that survived, so none is ever written twice.
        found = self._records()
        self._next = max(found, default=-1) + 1

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        command = request.command
        if isinstance(command, ReadAll):
            out.apply.append(Reply(request.request_id, value=self._records()))
            return
        assert isinstance(command, Append)
        sequence = self._next
        self._next += 1
        ops = tuple(
            Put(RECORD_PREFIX + b"%012d/%d" % (sequence, part), bytes([part]) * command.size)
            for part in range(RECORDS_PER_BATCH)
        )
        out.writes.append(WriteBatch(self.name, ops, sync=True, tag=sequence))
        # Replies wait for the writes before them: this one leaves only once the batch is on disk.
        out.apply.append(Reply(request.request_id, value=sequence))

    def _records(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for key, _ in self._storage.scan(RECORD_PREFIX, RECORD_PREFIX[:-1] + b"0", SCAN_MAX):
            sequence = int(key[len(RECORD_PREFIX) :].split(b"/")[0])
            counts[sequence] = counts.get(sequence, 0) + 1
        return counts
