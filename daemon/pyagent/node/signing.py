"""``proto.identity.Identity`` for the daemon: Ed25519 over the node's libp2p key pair.

An Ed25519 peer id is an identity multihash of the public key, so a signature is checked with the key
taken out of the sender's peer id: no key exchange, no table of keys.
"""

from __future__ import annotations

from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.peer.id import ID

from pyagent.proto.types import PeerId


class NodeSigner:
    def __init__(self, key_pair: KeyPair) -> None:
        if key_pair.private_key.get_type() != KeyType.Ed25519:
            raise ValueError(f"node key is {key_pair.private_key.get_type().name}, not Ed25519")
        self._private_key = key_pair.private_key

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._private_key.sign(data)
        return signature

    def verify(self, peer: PeerId, data: bytes, signature: bytes) -> bool:
        try:
            public_key = ID.from_base58(peer).extract_public_key()
        except ValueError:  # not base58
            return False
        if public_key is None or public_key.get_type() != KeyType.Ed25519:
            return False
        try:
            return bool(public_key.verify(data, signature))
        except ValueError:  # a signature of the wrong length
            return False
