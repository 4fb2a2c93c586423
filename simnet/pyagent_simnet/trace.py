"""The run's fingerprint: a running blake2b over a compact record of every delivery, drop and timer.

Two runs with the same seed and scenario must produce the same digest; storing the records themselves is
optional (``keep=True``) because a 1,000-peer run produces millions of them.
"""

from __future__ import annotations

import hashlib


class Trace:
    __slots__ = ("_hash", "count", "records")

    def __init__(self, keep: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.records: list[bytes] | None = [] if keep else None
        self.count = 0

    def add(self, record: bytes) -> None:
        self._hash.update(record)
        self.count += 1
        if self.records is not None:
            self.records.append(record)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
