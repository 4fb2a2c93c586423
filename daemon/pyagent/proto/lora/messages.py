"""What travels on ``/pyagent/lora/1.0.0``, and its decoding from untrusted peers.

- A **delta blob** (a ``Transfer``): one peer's value for one step of one round, as a msgpack map: the
  round ``r``, step ``s``, the weight ``w`` it carries (a sum of sample counts), the peers whose deltas
  are in it ``c``, its length ``n``, its encoding ``k`` (``f32``: raw little-endian floats; ``lora``: a
  Rust-core frame, docs/lora.md "Codecs"), the bytes ``f`` and the sender's signature ``sig`` over all of
  it (``signed_bytes``). It is decoded with ``decode_blob`` only once it arrived whole and its size was
  within the config's limit; the values themselves are decoded by ``values.decode``.
- A **report** (a message): ``have``: the senders whose blobs this peer holds for a step, and ``got``:
  whose reports it holds, so a peer whose report was lost is answered (``component``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyagent._core import blake3
from pyagent.errors import RemoteProtocolError
from pyagent.proto.types import PeerId
from pyagent.proto.wire import Limits, Message, decode_body, pack

PROTOCOL = "/pyagent/lora/1.0.0"
VERSION = 1
# A group never has more members than this, whatever the config says; and a merged value never names
# more contributing peers than CONTRIBUTORS_MAX.
GROUP_SIZE_CAP = 256
CONTRIBUTORS_MAX = 65_536
PEER_ID_CHARS_MAX = 128
STEPS_MAX = 16
SIGNATURE_BYTES_MAX = 128
ENCODINGS = ("f32", "lora")
# Reports: two lists of at most GROUP_SIZE_CAP peer ids each.
LIMITS = Limits(frame_size_bytes_max=96 * 1024, depth_max=3, count_max=2 * GROUP_SIZE_CAP + 16)
_SIGNING_DOMAIN = b"pyagent/lora/delta/1"
_BLOB_FIELDS = frozenset({"v", "t", "r", "s", "w", "c", "n", "k", "f", "sig"})
_REPORT_FIELDS = frozenset({"v", "t", "r", "s", "h", "g"})


@dataclass(frozen=True, slots=True)
class DeltaBlob:
    round: int
    step: int
    weight: float
    contributors: tuple[PeerId, ...]
    numel: int
    encoding: str
    payload: bytes
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class Report:
    round: int
    step: int
    have: frozenset[PeerId]
    got: frozenset[PeerId]


def signed_bytes(sender: PeerId, blob: DeltaBlob) -> bytes:
    """What the sender signs: every field of the blob and who sends it, with the payload as its hash."""
    fields = [blob.round, blob.step, sender, blob.weight, list(blob.contributors), blob.numel, blob.encoding]
    return _SIGNING_DOMAIN + pack([*fields, blake3(blob.payload)])


def encode_blob(blob: DeltaBlob) -> bytes:
    return pack(
        {
            "v": VERSION,
            "t": "delta",
            "r": blob.round,
            "s": blob.step,
            "w": blob.weight,
            "c": list(blob.contributors),
            "n": blob.numel,
            "k": blob.encoding,
            "f": blob.payload,
            "sig": blob.signature,
        }
    )


def blob_limits(blob_bytes_max: int) -> Limits:
    return Limits(frame_size_bytes_max=blob_bytes_max, depth_max=3, count_max=CONTRIBUTORS_MAX + 32)


def decode_blob(data: bytes, limits: Limits, numel_max: int) -> DeltaBlob:
    """A peer's delta blob; ``RemoteProtocolError`` for anything malformed (the signature is not checked)."""
    message = decode_body(data, limits)
    if message["t"] != "delta" or set(message) != _BLOB_FIELDS:
        raise RemoteProtocolError(f"delta blob needs exactly the fields {sorted(_BLOB_FIELDS)}")
    _check_version(message)
    weight, contributors, numel = message["w"], message["c"], message["n"]
    if not isinstance(weight, float) or not math.isfinite(weight) or weight <= 0:
        raise RemoteProtocolError(f"delta blob weight must be a positive finite float, got {weight!r}")
    if not isinstance(contributors, list) or not 1 <= len(contributors) <= CONTRIBUTORS_MAX:
        raise RemoteProtocolError("delta blob needs 1 or more contributing peers")
    peers = tuple(_peer(item) for item in contributors)
    if len(set(peers)) != len(peers):
        raise RemoteProtocolError("delta blob names a contributing peer twice")
    if not _is_uint(numel) or not 1 <= numel <= numel_max:
        raise RemoteProtocolError(f"delta blob length must be 1..{numel_max}, got {numel!r}")
    if message["k"] not in ENCODINGS or not isinstance(message["f"], bytes):
        raise RemoteProtocolError(f"delta blob encoding must be one of {ENCODINGS}, with bytes 'f'")
    signature = message["sig"]
    if not isinstance(signature, bytes) or len(signature) > SIGNATURE_BYTES_MAX:
        raise RemoteProtocolError("delta blob signature must be bytes")
    round_number, step = _round_and_step(message)
    return DeltaBlob(round_number, step, weight, peers, numel, message["k"], message["f"], signature)


def encode_report(report: Report) -> Message:
    return {
        "v": VERSION,
        "t": "have",
        "r": report.round,
        "s": report.step,
        "h": sorted(report.have),
        "g": sorted(report.got),
    }


def decode_report(message: Message) -> Report:
    if message["t"] != "have" or set(message) != _REPORT_FIELDS:
        raise RemoteProtocolError(f"lora message needs exactly the fields {sorted(_REPORT_FIELDS)}")
    _check_version(message)
    round_number, step = _round_and_step(message)
    return Report(round_number, step, _peer_set(message["h"]), _peer_set(message["g"]))


def _check_version(message: Message) -> None:
    if message["v"] != VERSION:
        raise RemoteProtocolError(f"lora message version {message['v']} is not {VERSION}")


def _round_and_step(message: Message) -> tuple[int, int]:
    round_number, step = message["r"], message["s"]
    if not _is_uint(round_number) or round_number >= 1 << 63:
        raise RemoteProtocolError(f"lora round must be an unsigned 63-bit integer, got {round_number!r}")
    if not _is_uint(step) or step >= STEPS_MAX:
        raise RemoteProtocolError(f"lora step must be in 0..{STEPS_MAX - 1}, got {step!r}")
    return round_number, step


def _peer_set(raw: object) -> frozenset[PeerId]:
    if not isinstance(raw, list) or len(raw) > GROUP_SIZE_CAP:
        raise RemoteProtocolError(f"lora report needs lists of at most {GROUP_SIZE_CAP} peers")
    return frozenset(_peer(item) for item in raw)


def _peer(raw: object) -> PeerId:
    if not isinstance(raw, str) or not 1 <= len(raw) <= PEER_ID_CHARS_MAX:
        raise RemoteProtocolError(f"peer id must be a string of 1..{PEER_ID_CHARS_MAX} characters")
    return raw


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
