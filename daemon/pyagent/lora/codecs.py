"""LoRA delta frames as numpy arrays: thin helpers over the codecs of the Rust core (``pyagent._core``).

Encode with ``LoraCodec.encode`` (or ``LoraErrorFeedback.encode``, one per destination); decode with
:func:`decode`. ``LoraFrameError`` (a ``ValueError``) means a frame's bytes are malformed: when the frame
came from a peer, the protocol that carried it treats that as the peer's fault.

numpy is imported here only; the CLI never imports this module at start.
"""

import numpy as np
import numpy.typing as npt

from pyagent._core import (
    LoraCodec,
    LoraErrorFeedback,
    LoraFrameError,
    lora_choose_codec,
    lora_decode_into,
    lora_frame_info,
)

__all__ = [
    "LoraCodec",
    "LoraErrorFeedback",
    "LoraFrameError",
    "decode",
    "lora_choose_codec",
    "residual",
]


def decode(frame: bytes, numel_max: int) -> tuple[LoraCodec, npt.NDArray[np.float32]]:
    """The frame's codec and its values in their shape; at most ``numel_max`` values are accepted.

    The header is checked before the array is allocated, so a frame cannot make us allocate more than
    ``numel_max`` values.
    """
    _, shape = lora_frame_info(frame, numel_max)
    out = np.empty(shape, dtype=np.float32)
    codec = lora_decode_into(frame, out)
    return codec, out


def residual(feedback: LoraErrorFeedback) -> npt.NDArray[np.float32]:
    """A copy of what ``feedback`` has not sent yet, in the delta's shape."""
    out = np.empty(feedback.shape, dtype=np.float32)
    feedback.residual_into(out)
    return out
