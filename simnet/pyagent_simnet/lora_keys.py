"""Ed25519 keys for simulated peers, derived from the run's seed: ``proto.identity.Identity`` in simnet.

simnet's peer ids (``p00000``) carry no key, unlike libp2p's, so the keyring plays the part of the key
inside the id: it maps each peer id to its public key. The keys are real Ed25519 (PyNaCl, as py-libp2p
uses), so a simulated peer's signature is checked exactly as a daemon checks one.
"""

from __future__ import annotations

import hashlib

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from pyagent.proto.types import PeerId


class SeededKeyring:
    """Every simulated peer's key, made on first use from ``seed`` and the peer id."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._keys: dict[PeerId, SigningKey] = {}

    def _key(self, peer: PeerId) -> SigningKey:
        key = self._keys.get(peer)
        if key is None:
            secret = hashlib.blake2b(f"{self._seed}/{peer}".encode(), digest_size=32).digest()
            key = self._keys[peer] = SigningKey(secret)
        return key

    def public_key(self, peer: PeerId) -> VerifyKey:
        return self._key(peer).verify_key

    def identity(self, peer: PeerId) -> PeerIdentity:
        return PeerIdentity(self, peer)


class PeerIdentity:
    """One peer's signing, and checking of anyone's signatures, through the keyring."""

    def __init__(self, keyring: SeededKeyring, peer: PeerId) -> None:
        self._keyring = keyring
        self._signing = keyring._key(peer)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._signing.sign(data).signature)

    def verify(self, peer: PeerId, data: bytes, signature: bytes) -> bool:
        try:
            self._keyring.public_key(peer).verify(data, signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True
