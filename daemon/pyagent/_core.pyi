"""Type stub of ``pyagent._core``, the PyO3 binding of the Rust crate ``pyagent-core``.

Checked against the built module by ``python -m mypy.stubtest pyagent._core``.
"""

from collections.abc import Iterable
from typing import final

__all__ = [
    "BLAKE3_LEN_BYTES",
    "KEY_LEN_BYTES",
    "NONCE_LEN_BYTES",
    "StorageError",
    "Store",
    "XSalsa20",
    "__version__",
    "blake3",
    "blake3_chunks",
    "check_msgpack_shape",
    "format_swarm_key",
    "key_fingerprint",
    "parse_swarm_key",
]

__version__: str
KEY_LEN_BYTES: int
BLAKE3_LEN_BYTES: int
NONCE_LEN_BYTES: int

@final
class XSalsa20:
    """XSalsa20 keystream for one direction of a private-network connection (stateful position)."""

    # PyO3 constructs in ``__new__``; stubtest checks that, and callers write ``XSalsa20(key, nonce)``.
    def __new__(cls, key: bytes, nonce: bytes) -> XSalsa20: ...
    def apply(self, data: bytes) -> bytes: ...

def parse_swarm_key(text: str) -> bytes: ...
def format_swarm_key(key: bytes) -> str: ...
def key_fingerprint(key: bytes) -> str: ...

# Raises ValueError for a body that is not exactly one ext-free msgpack value within the bounds.
def check_msgpack_shape(body: bytes, depth_max: int, count_max: int) -> None: ...

# BLAKE3 (32 bytes); large inputs are hashed with the GIL released.
def blake3(data: bytes) -> bytes: ...

# The 32-byte BLAKE3 hashes of consecutive ``chunk_size_bytes`` pieces of ``data``, concatenated.
def blake3_chunks(data: bytes, chunk_size_bytes: int) -> bytes: ...

class StorageError(OSError):
    """The store's disk or engine failed; the store refuses every later call (restart to recover)."""

@final
class Store:
    """The durable store behind ``pyagent.node.storage.StorageHandle`` (raft-engine in ``dir``).

    ``write`` takes ``(component, ops)`` pairs and applies them all in ONE engine write (one fsync when
    ``sync``), all or nothing; it returns the bytes written. An op is a tuple by code:
    ``(0, key, value)`` Put, ``(1, key)`` Delete, ``(2, start, end)`` DeleteRange,
    ``(3, log, first_index, entries)`` LogAppend, ``(4, log, from_index)`` LogTruncate,
    ``(5, log, to_index)`` LogCompact. ValueError: a batch the semantics refuse (a hole); nothing was
    written. IndexError: ``log_entries`` of entries not all held. StorageError: the disk or the engine.
    """

    def __new__(cls, path: str) -> Store: ...
    def close(self) -> None: ...
    def is_empty(self) -> bool: ...
    # (engine writes, of which fsync'd, bytes written) since the store was opened.
    def stats(self) -> tuple[int, int, int]: ...
    def write(self, batches: Iterable[tuple[str, Iterable[tuple[object, ...]]]], sync: bool) -> int: ...
    def get(self, component: str, key: bytes) -> bytes | None: ...
    def scan(
        self, component: str, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]: ...
    def log_bounds(self, component: str, log: str) -> tuple[int, int] | None: ...
    def log_entries(self, component: str, log: str, lo: int, hi: int) -> list[bytes]: ...
