"""Small shared types of the protocol cores.

``Rng`` is a structural type so that cores can take a seeded ``random.Random`` (or simnet's generator)
without importing ``random`` themselves: randomness is always injected, never drawn from the OS.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from typing import Any, Protocol

PeerId = str
"""A libp2p peer id in its base58 text form."""

ProtocolId = str
"""A libp2p protocol id, ``/pyagent/<name>/<major>.<minor>.<patch>``."""


class Rng(Protocol):
    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...

    def randrange(self, start: int, stop: int | None = None, step: int = 1, /) -> int: ...

    def shuffle(self, x: MutableSequence[Any], /) -> None: ...


US_PER_MS = 1_000
US_PER_S = 1_000_000
