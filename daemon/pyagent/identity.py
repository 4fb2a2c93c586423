"""The node's Ed25519 identity: created once by ``pyagent init``, loaded at every start.

The key file holds the libp2p protobuf encoding of the private key (the same bytes go-libp2p and kubo
keep), so an identity can move between implementations. It is created with mode 0600 atomically, never
readable by others even for an instant.
"""

from __future__ import annotations

from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from pyagent import secretfile
from pyagent.errors import ConfigError


def create(path: Path) -> KeyPair:
    """Write a fresh identity to ``path``; refuses to overwrite an existing one."""
    key_pair = create_new_key_pair()
    try:
        secretfile.write(path, key_pair.private_key.serialize())
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; remove it only if you mean to change this peer's id"
        ) from None
    return key_pair


def load(path: Path) -> KeyPair:
    data, exposed = secretfile.read(path, "identity", "run `pyagent init` first")
    if exposed:
        raise ConfigError(f"{path} is readable by other users; fix it with `chmod 600 {path}`")
    try:
        private_key = deserialize_private_key(data)
    except Exception:
        # The deserializer raises assorted protobuf/crypto errors; all mean the same thing to an operator.
        raise ConfigError(f"{path}: not a libp2p private key file; restore it from a backup") from None
    if private_key.get_type() != KeyType.Ed25519:
        raise ConfigError(f"{path}: key type {private_key.get_type().name} is not Ed25519")
    return KeyPair(private_key, private_key.get_public_key())


def peer_id_of(key_pair: KeyPair) -> str:
    return str(ID.from_pubkey(key_pair.public_key))
