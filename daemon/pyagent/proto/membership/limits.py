"""Wire-format bounds of ``/pyagent/membership/1.0.0``, shared by the decoder and ``Config`` validation.

These are protocol constants, not tunables: every peer must accept what every other peer may send, so a
configuration can only choose values at or below them.
"""

from __future__ import annotations

from pyagent.proto.wire import Limits

PEER_ID_CHARS_MAX = 128
ADDRS_MAX = 8
ADDR_CHARS_MAX = 256
# Metadata strings (tags, plugin names, versions, extra keys and string values) and list lengths.
TEXT_CHARS_MAX = 256
METADATA_LIST_MAX = 64
METADATA_EXTRA_MAX = 64
METADATA_BYTES_MAX = 4_096

# Bytes of one update entry beyond its metadata and addresses: the peer id, an accuser id, the small
# integers and the msgpack headers.
ENTRY_OVERHEAD_BYTES_MAX = 2 * PEER_ID_CHARS_MAX + 64
PIGGYBACK_BYTES_MAX = 16 * 1024
UPDATES_MAX = 256
# One push-pull or metadata-reply chunk; a whole state of 10,000 members travels as ~20 such chunks.
CHUNK_BYTES_MAX = 96 * 1024
ENTRIES_MAX = 1_024
QUERY_IDS_MAX = 512

SEQ_MAX = (1 << 32) - 1
# A helper never waits longer than this before nacking, whatever the prober asks.
NACK_WAIT_MS_MAX = 60_000
INCARNATION_MAX = (1 << 63) - 1

# The frame bound leaves room for the envelope around the largest chunk. count_max covers a chunk of
# ENTRIES_MAX entries of at most (6 + ADDRS_MAX + 1) values each; depth 6 is message > list > entry >
# metadata map > extra/list > scalar.
FRAME_LIMITS = Limits(frame_size_bytes_max=CHUNK_BYTES_MAX + 16 * 1024, depth_max=6, count_max=32 * 1024)
# Records per metadata reply chunk: 64 records of at most ~450 values each stay under count_max.
METADATA_RECORDS_MAX = 64
