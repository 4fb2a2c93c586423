"""The frame codec every PyAgent protocol speaks: unsigned-varint length prefix, then a msgpack map.

A frame body is a msgpack map with at least ``v`` (the message format version, an int) and ``t`` (the
message type, a str). The decoder is the trust boundary: whatever bytes a peer sends, it either returns
messages or raises ``RemoteProtocolError``. It never raises anything else and never buffers more than
one frame's worth of bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from pyagent._core import check_msgpack_shape
from pyagent.errors import LocalProtocolError, RemoteProtocolError

Message = dict[str, Any]

# A u64 varint needs at most 10 bytes; our frames are far smaller, so 5 bytes (35 bits) is plenty and
# lets the decoder reject a runaway prefix early.
VARINT_BYTES_MAX = 5


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to every decoded frame. Each protocol may choose tighter ones."""

    frame_size_bytes_max: int = 1 << 20
    depth_max: int = 8
    # Total number of values (containers and scalars) in one message.
    count_max: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.frame_size_bytes_max < (1 << (7 * VARINT_BYTES_MAX)):
            raise ValueError(f"frame_size_bytes_max out of range: {self.frame_size_bytes_max}")
        if self.depth_max < 1 or self.count_max < 1:
            raise ValueError("depth_max and count_max must be positive")


DEFAULT_LIMITS = Limits()

# One packer for everything encoded here: building a Packer costs twice what packing a small message does.
# It keeps nothing between calls (it resets after each value, and after an error), and cores and shells
# encode on a single thread.
_PACKER = msgpack.Packer(use_bin_type=True)


def pack(value: object) -> bytes:
    """msgpack bytes of ``value``, exactly as a frame body encodes it."""
    packed: bytes = _PACKER.pack(value)
    return packed


# Most frames are under 128 bytes: their one-byte prefixes are made once.
_ONE_BYTE_VARINTS = [bytes((value,)) for value in range(0x80)]


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise LocalProtocolError(f"varint must be non-negative, got {value}")
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(message: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Serialize one message into a frame. Refuses (locally) what the peer's decoder would refuse."""
    check_envelope(message, LocalProtocolError)
    body = pack(message)
    if len(body) > limits.frame_size_bytes_max:
        raise LocalProtocolError(
            f"frame of {len(body)} bytes exceeds frame_size_bytes_max={limits.frame_size_bytes_max}"
        )
    return encode_varint(len(body)) + body


def check_envelope(message: object, error: type[Exception]) -> None:
    if not isinstance(message, dict):
        raise error(f"message must be a map, got {type(message).__name__}")
    version = message.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise error("message lacks an integer version field 'v'")
    if not isinstance(message.get("t"), str):
        raise error("message lacks a string type field 't'")


def decode_body(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one frame body (without its length prefix)."""
    if len(body) > limits.frame_size_bytes_max:
        raise RemoteProtocolError(f"frame of {len(body)} bytes exceeds {limits.frame_size_bytes_max}")
    # Depth, value count, truncation, trailing bytes and ext types are checked on the bytes, so a frame
    # that breaks them is refused before msgpack builds any object for it. The messages say what was
    # wrong ("message nested deeper than depth_max=...", "truncated msgpack", ...) and are kept as is.
    try:
        check_msgpack_shape(body, limits.depth_max, limits.count_max)
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from None
    # The shape is sound; msgpack still bounds str and bin lengths, checks UTF-8 and admits only str and
    # bytes map keys.
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_array_len=limits.count_max,
            max_map_len=limits.count_max,
            max_str_len=limits.frame_size_bytes_max,
            max_bin_len=limits.frame_size_bytes_max,
            max_ext_len=0,
        )
    # TypeError is what msgpack raises for an unhashable map key (e.g. a list used as a key).
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RemoteProtocolError(f"bad msgpack: {exc}") from None
    except RecursionError:
        raise RemoteProtocolError("bad msgpack: nested too deeply") from None
    check_envelope(value, RemoteProtocolError)
    result: Message = value
    return result


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, take out whole messages.

    It holds at most one partial frame, so its buffer is bounded by ``frame_size_bytes_max`` plus the
    prefix. After it raises, the stream is poisoned and must be dropped.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._failed = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._failed:
            raise LocalProtocolError("decoder already failed; drop the stream")
        try:
            if not self._buffer:
                # The common case, one write holding exactly one whole frame, decodes without a copy.
                header = _frame_header(data, self.limits.frame_size_bytes_max)
                if header is not None and header[0] + header[1] == len(data):
                    return [decode_body(data[header[1] :], self.limits)]
            self._buffer += data
            messages: list[Message] = []
            while True:
                header = _frame_header(self._buffer, self.limits.frame_size_bytes_max)
                if header is None:
                    break
                length, prefix_bytes = header
                end = prefix_bytes + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[prefix_bytes:end])
                del self._buffer[:end]
                messages.append(decode_body(body, self.limits))
        except RemoteProtocolError:
            self._failed = True
            self._buffer.clear()
            raise
        return messages


def _frame_header(data: bytes | bytearray, frame_size_bytes_max: int) -> tuple[int, int] | None:
    """The body length and prefix length of the frame ``data`` starts with; None until the prefix is whole."""
    if data and data[0] < 0x80 and data[0] <= frame_size_bytes_max:
        return data[0], 1
    value = 0
    for index, byte in enumerate(data[:VARINT_BYTES_MAX]):
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index > 0 and byte == 0:
                raise RemoteProtocolError("non-minimal varint length prefix")
            if value > frame_size_bytes_max:
                raise RemoteProtocolError(
                    f"frame length {value} exceeds frame_size_bytes_max={frame_size_bytes_max}"
                )
            return value, index + 1
    if len(data) >= VARINT_BYTES_MAX:
        raise RemoteProtocolError("varint length prefix too long")
    return None
