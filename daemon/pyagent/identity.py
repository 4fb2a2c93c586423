"""The node's Ed25519 identity: created once by ``pyagent init``, loaded at every start.

The key file holds the libp2p protobuf encoding of the private key (the same bytes go-libp2p and kubo
keep), so an identity can move between implementations. It is created with mode 0600 atomically, never
readable by others even for an instant.

libp2p is imported only by the functions that need its key objects: `peer_id_from_file` reads the file
with nothing heavier than ``cryptography``, so that `pyagent id` with no daemon stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import base58

from pyagent import secretfile
from pyagent.errors import ConfigError

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

# libp2p's crypto.pb: message PrivateKey { required KeyType Type = 1; required bytes Data = 2; }
_KEY_TYPE_NAMES = {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}
_ED25519 = 1
_SEED_BYTES = 32
# A public key's protobuf (type Ed25519, 32 bytes of data) is short enough that the peer id embeds it
# whole, as an identity multihash (code 0x00, length 36).
_PUBLIC_KEY_PREFIX = bytes([0x08, _ED25519, 0x12, 32])
_IDENTITY_MULTIHASH = bytes([0x00, len(_PUBLIC_KEY_PREFIX) + 32])


def create(path: Path) -> KeyPair:
    """Write a fresh identity to ``path``; refuses to overwrite an existing one."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    key_pair = create_new_key_pair()
    try:
        secretfile.write(path, key_pair.private_key.serialize())
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; remove it only if you mean to change this peer's id"
        ) from None
    return key_pair


def load(path: Path) -> KeyPair:
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    private_key = Ed25519PrivateKey.from_bytes(_ed25519_seed(path))
    return KeyPair(private_key, private_key.get_public_key())


def peer_id_of(key_pair: KeyPair) -> str:
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(key_pair.public_key))


def peer_id_from_file(path: Path) -> str:
    """The peer id of the identity at ``path``, checked as `load` checks it, without importing libp2p."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.from_private_bytes(_ed25519_seed(path)).public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base58.b58encode(_IDENTITY_MULTIHASH + _PUBLIC_KEY_PREFIX + raw).decode()


def _ed25519_seed(path: Path) -> bytes:
    """The private key's 32-byte seed, from a file that must be private, well-formed and Ed25519."""
    data, exposed = secretfile.read(path, "identity", "run `pyagent init` first")
    if exposed:
        raise ConfigError(f"{path} is readable by other users; fix it with `chmod 600 {path}`")
    not_a_key = ConfigError(f"{path}: not a libp2p private key file; restore it from a backup")
    # Two fields, each a one-byte tag: the type as a varint (every key type fits in one byte) and the
    # data with a one-byte length (an Ed25519 key's data is 32 bytes, or 64 with the public half, as
    # go-libp2p writes it).
    if len(data) < 4 or data[0] != 0x08 or data[1] > 0x7F or data[2] != 0x12 or data[3] != len(data) - 4:
        raise not_a_key
    if data[1] != _ED25519:
        name = _KEY_TYPE_NAMES.get(data[1], f"#{data[1]}")
        raise ConfigError(f"{path}: key type {name} is not Ed25519")
    key = data[4:]
    if len(key) not in (_SEED_BYTES, 2 * _SEED_BYTES):
        raise not_a_key
    return key[:_SEED_BYTES]
