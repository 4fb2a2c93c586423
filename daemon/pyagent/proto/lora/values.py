"""A step's values as bytes and back: lossless ``f32``, or a Rust-core frame (``pyagent.lora.codecs``).

A sender decodes its own bytes too and uses that, not its exact value, in its group's mean: every
member of a group then averages the very same numbers and they agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pyagent.errors import RemoteProtocolError
from pyagent.lora.codecs import LoraCodec, LoraErrorFeedback, LoraFrameError, decode
from pyagent.proto.lora.config import AUTO, Config

Vector = npt.NDArray[np.float32]
_F32 = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Encoded:
    encoding: str  # "f32" or "lora" (messages.ENCODINGS)
    payload: bytes
    # What every receiver decodes from ``payload``.
    values: Vector


def codec_for(config: Config, relay: bool) -> LoraCodec | None:
    """The codec of a peer's own delta (``relay`` False) or of a group mean; None for lossless f32.
    Relayed means are always dense: top-k would drop most of every group's mean for good."""
    name = config.relay_codec if relay else config.codec
    if name == "f32":
        return None
    if relay or config.k_per_chunk == 0:
        return LoraCodec(name, block_size=config.block_size)
    return LoraCodec(name, config.block_size, config.chunk_size, config.k_per_chunk)


def describe_codec(codec: LoraCodec | None) -> str:
    """One codec in words: ``f32``, ``int8``, ``int2 top-123/4096``."""
    if codec is None:
        return "f32"
    if codec.k_per_chunk:
        return f"{codec.codec} top-{codec.k_per_chunk}/{codec.chunk_size}"
    return codec.codec


def describe(config: Config, chosen: str | None = None) -> str:
    """The codecs of ``config`` in words, for status and reports: ``int2 top-123/4096, relay int8``.
    With codec = "auto", ``chosen`` is the codec the latest round picked (``auto: int4, relay int8``)."""
    if config.codec == AUTO:
        own = AUTO if chosen is None else f"{AUTO}: {chosen}"
    else:
        own = describe_codec(codec_for(config, relay=False))
    return f"{own}, relay {describe_codec(codec_for(config, relay=True))}"


def encode(values: Vector, codec: LoraCodec | None, feedback: LoraErrorFeedback | None) -> Encoded:
    """``values`` as sent; ``feedback`` (own deltas only) adds what earlier frames left out and keeps what
    this one leaves out. Rounding is to the nearest level, so the same values always encode alike."""
    if codec is None:
        payload = values.astype(_F32, copy=False).tobytes()
        return Encoded("f32", payload, values.copy())
    frame = feedback.encode(codec, values) if feedback is not None else codec.encode(values)
    return Encoded("lora", frame, decode_payload("lora", frame, values.size))


def decode_payload(encoding: str, payload: bytes, numel: int) -> Vector:
    """The values a peer sent; ``RemoteProtocolError`` if they are malformed, not ``numel`` long, or not
    finite."""
    if encoding == "f32":
        if len(payload) != numel * _F32.itemsize:
            raise RemoteProtocolError(f"f32 payload of {len(payload)} bytes does not hold {numel} values")
        values: Vector = np.frombuffer(payload, dtype=_F32).astype(np.float32)
    else:
        try:
            _, decoded = decode(payload, numel)
        except LoraFrameError as exc:
            raise RemoteProtocolError(f"lora frame: {exc}") from None
        if decoded.size != numel:
            raise RemoteProtocolError(f"lora frame holds {decoded.size} values, not {numel}")
        values = decoded.reshape(-1)
    if not np.isfinite(values).all():
        raise RemoteProtocolError("delta values must be finite")
    return values
