"""pyagent._core's XSalsa20 through the binding: the published vector, and stream state across chunks."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent._core import NONCE_LEN_BYTES, XSalsa20, key_fingerprint

# The same vector the Rust tests use: Go's golang.org/x/crypto/salsa20 TestXSalsa20.
VECTOR_KEY = b"this is 32-byte key for xsalsa20"
VECTOR_NONCE = b"24-byte nonce for xsalsa"
VECTOR_CIPHERTEXT = bytes.fromhex("002d4513843fc240c401e541")

# Large enough to cross the binding's GIL-release threshold (64 KiB) and several XSalsa20 blocks.
LARGE_SIZE_BYTES = 200_000


def test_matches_the_published_vector() -> None:
    assert XSalsa20(VECTOR_KEY, VECTOR_NONCE).apply(b"Hello world!") == VECTOR_CIPHERTEXT


def test_fingerprint_matches_go_and_rust_libp2p() -> None:
    # rust-libp2p's pnet test vector, "checked against go-ipfs output".
    key = bytes.fromhex("6189c5cf0b87fb800c1a9feeda73c6ab5e998db48fb9e6a978575c770ceef683")
    assert key_fingerprint(key) == "45fc986bbc9388a11d939df26f730f0c"


@pytest.mark.parametrize(("key_size", "nonce_size"), [(31, NONCE_LEN_BYTES), (32, 8), (33, NONCE_LEN_BYTES)])
def test_refuses_wrong_sizes(key_size: int, nonce_size: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        XSalsa20(bytes(key_size), bytes(nonce_size))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=NONCE_LEN_BYTES, max_size=NONCE_LEN_BYTES),
    data=st.binary(max_size=2000),
    encrypt_cuts=st.lists(st.integers(min_value=0), max_size=8),
    decrypt_cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_round_trip_across_arbitrary_chunkings(
    key: bytes, nonce: bytes, data: bytes, encrypt_cuts: list[int], decrypt_cuts: list[int]
) -> None:
    encrypt, decrypt = XSalsa20(key, nonce), XSalsa20(key, nonce)
    ciphertext = b"".join(encrypt.apply(piece) for piece in chunked(data, encrypt_cuts))
    assert ciphertext == XSalsa20(key, nonce).apply(data)
    assert b"".join(decrypt.apply(piece) for piece in chunked(ciphertext, decrypt_cuts)) == data


def test_large_buffers_continue_the_same_keystream() -> None:
    data = bytes(range(256)) * (LARGE_SIZE_BYTES // 256)
    whole = XSalsa20(VECTOR_KEY, VECTOR_NONCE).apply(data)
    cipher = XSalsa20(VECTOR_KEY, VECTOR_NONCE)
    assert cipher.apply(data[:100]) + cipher.apply(data[100:]) == whole
    vector_keystream = bytes(c ^ p for c, p in zip(VECTOR_CIPHERTEXT, b"Hello world!", strict=True))
    assert whole[:12] == bytes(k ^ d for k, d in zip(vector_keystream, data[:12], strict=True))
