"""The node's Ed25519 identity: created once by ``pyagent init``, loaded at every start.

The key file holds the libp2p protobuf encoding of the private key (the same bytes go-libp2p and kubo
keep), so an identity can move between implementations. It is created with mode 0600 atomically, never
readable by others even for an instant.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from pyagent.errors import ConfigError

KEY_FILE_MODE = 0o600


def create(path: Path) -> KeyPair:
    """Write a fresh identity to ``path``; refuses to overwrite an existing one."""
    key_pair = create_new_key_pair()
    data = key_pair.private_key.serialize()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; remove it only if you mean to change this peer's id"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return key_pair


def load(path: Path) -> KeyPair:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"no identity at {path}; run `pyagent init` first") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read identity ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
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
