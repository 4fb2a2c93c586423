"""The signing a protocol core may ask of its node, without holding a key or doing any crypto I/O.

The daemon's implementation signs with the node's libp2p Ed25519 key (``pyagent.node.signing``); a
peer id embeds its public key, so ``verify`` needs nothing but the id. simnet gives each simulated node
a key derived from the run's seed (``pyagent_simnet.lora_kit``).
"""

from __future__ import annotations

from typing import Protocol

from pyagent.proto.types import PeerId


class Identity(Protocol):
    def sign(self, data: bytes) -> bytes:
        """This node's signature over ``data``."""
        ...

    def verify(self, peer: PeerId, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``peer``'s over ``data``. False, never an exception, for a bad
        signature or a peer id that carries no usable key."""
        ...
