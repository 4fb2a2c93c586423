"""The identity file: the peer id read without libp2p (`pyagent id` with no daemon) is the one libp2p
derives; keys as go-libp2p writes them load too; anything else is one ConfigError, never a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent import identity, secretfile
from pyagent.errors import ConfigError


def test_the_peer_id_read_without_libp2p_is_the_one_libp2p_derives(tmp_path: Path) -> None:
    for n in range(5):
        path = tmp_path / f"key-{n}"
        created = identity.create(path)
        expected = identity.peer_id_of(created)
        assert identity.peer_id_from_file(path) == expected
        assert identity.peer_id_of(identity.load(path)) == expected
        assert expected.startswith("12D3KooW")


def test_a_key_with_its_public_half_as_go_libp2p_writes_it_loads(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    short, long = tmp_path / "seed", tmp_path / "seed-and-public"
    secretfile.write(short, bytes([0x08, 0x01, 0x12, 32]) + seed)
    secretfile.write(long, bytes([0x08, 0x01, 0x12, 64]) + seed + public)
    assert identity.peer_id_from_file(long) == identity.peer_id_from_file(short)
    assert identity.peer_id_of(identity.load(long)) == identity.peer_id_from_file(short)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a libp2p private key file"),
        (b"hello, world", "not a libp2p private key file"),
        (bytes([0x08, 0x00, 0x12, 32]) + bytes(32), "key type RSA is not Ed25519"),
        (bytes([0x08, 0x02, 0x12, 32]) + bytes(32), "key type Secp256k1 is not Ed25519"),
        (bytes([0x08, 0x01, 0x12, 16]) + bytes(16), "not a libp2p private key file"),
        (bytes([0x08, 0x01, 0x12, 33]) + bytes(32), "not a libp2p private key file"),
    ],
)
def test_a_bad_identity_file_is_one_config_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "identity.key"
    secretfile.write(path, data)
    for read in (identity.peer_id_from_file, identity.load):
        with pytest.raises(ConfigError, match=message):
            read(path)


def test_an_identity_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    identity.create(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        identity.peer_id_from_file(path)


@given(st.binary(max_size=80))
@settings(max_examples=200)
def test_any_bytes_give_a_peer_id_or_a_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity.key"
        secretfile.write(path, data)
        try:
            peer = identity.peer_id_from_file(path)
        except ConfigError:
            return
        assert peer == identity.peer_id_of(identity.load(path))
