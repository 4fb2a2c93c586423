"""Type stub of ``pyagent._core``, the PyO3 binding of the Rust crate ``pyagent-core``.

Checked against the built module by ``python -m mypy.stubtest pyagent._core``.
"""

from typing import final

__all__ = [
    "BLAKE3_LEN_BYTES",
    "KEY_LEN_BYTES",
    "NONCE_LEN_BYTES",
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
