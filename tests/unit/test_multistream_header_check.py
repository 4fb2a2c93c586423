"""The first-bytes check that tells a private peer from a public one (pyagent.node.pnet): it accepts
multistream-select's header however the bytes are split, and nothing else."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pyagent.node.pnet import MULTISTREAM_HEADER, MultistreamHeaderCheck


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.binary(max_size=64), st.lists(st.integers(min_value=0), max_size=12))
def test_the_header_passes_in_any_chunks(tail: bytes, cuts: list[int]) -> None:
    check = MultistreamHeaderCheck()
    assert all(check.matches(chunk) for chunk in split(MULTISTREAM_HEADER + tail, cuts))


@given(st.binary(min_size=1, max_size=64), st.lists(st.integers(min_value=0), max_size=12))
def test_anything_else_fails_at_its_first_wrong_byte(data: bytes, cuts: list[int]) -> None:
    wrong_at = next(
        (i for i, (a, b) in enumerate(zip(data, MULTISTREAM_HEADER, strict=False)) if a != b), None
    )
    check = MultistreamHeaderCheck()
    consumed = 0
    for chunk in split(data, cuts):
        fails_here = wrong_at is not None and consumed <= wrong_at < consumed + len(chunk)
        assert check.matches(chunk) is not fails_here
        if fails_here:
            return
        consumed += len(chunk)
    assert wrong_at is None  # then data is a prefix of the header, or the header and more


def test_a_random_nonce_fails_on_its_first_byte_255_times_in_256() -> None:
    passed = [first for first in range(256) if MultistreamHeaderCheck().matches(bytes([first]))]
    assert passed == [MULTISTREAM_HEADER[0]]
