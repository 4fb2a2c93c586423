"""The core's ``blake3`` over any C-contiguous byte buffer: the same digest as over the bytes it holds."""

import numpy as np
import pytest

from pyagent._core import blake3


@pytest.mark.parametrize("size", [0, 1000, 200_000])  # 200 kB: past the size hashed without the GIL
def test_a_buffer_hashes_as_its_bytes(size: int) -> None:
    data = bytes(i % 251 for i in range(size + 32))
    view = memoryview(data)[:size]
    expected = blake3(data[:size])
    assert blake3(view) == expected, "a view of part of the bytes"
    assert blake3(bytearray(data[:size])) == expected
    assert blake3(np.frombuffer(data, np.uint8)[:size]) == expected
    assert blake3(data) != expected


def test_a_strided_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="C-contiguous"):
        blake3(np.zeros(64, np.uint8)[::2])
