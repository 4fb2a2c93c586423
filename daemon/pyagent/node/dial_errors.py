"""`DialError`: why a connect failed, in words an operator can act on.

py-libp2p reports every dial failure as a ``SwarmException`` wrapping a chain of causes; the reason
is recovered from that chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from libp2p.exceptions import MultiError
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey
from libp2p.transport.exceptions import MuxerUpgradeFailure, OpenConnectionError, SecurityUpgradeFailure

DialReason = Literal["unreachable", "timeout", "wrong-peer-id", "key-mismatch", "security", "refused"]

_REASON_HINTS: dict[str, str] = {
    "unreachable": "nothing accepts TCP connections there (wrong address, or the peer is down)",
    "timeout": "no complete handshake in time (a silent server, or a network that drops packets)",
    "wrong-peer-id": "a different peer answered at that address (the /p2p/ id is stale or mistyped)",
    "key-mismatch": "the peer uses a different private-network key",
    "security": "the security handshake failed (not a Noise libp2p peer, or its handshake was bad)",
    "refused": "the peer or this host refused the connection (an allow-list, or connection limits)",
}

# Where py-libp2p says "the peer's key is not the one we dialed" without a dedicated exception.
_PEER_ID_MISMATCH_TEXT = "Peer ID mismatch"
_LIMIT_TEXTS = ("Maximum connections limit reached", "denied by resource manager")
# Matched by name: the private-network module is optional and imported only when a psk is set.
_KEY_MISMATCH_ERROR = ("pyagent.node.pnet", "KeyMismatchError")


class DialError(Exception):
    def __init__(
        self, reason: DialReason, address: str, detail: str = "", nothing_listens: bool = False
    ) -> None:
        self.reason: DialReason = reason
        self.address = address
        self.nothing_listens = nothing_listens
        message = f"cannot connect to {address}: {reason}: {_REASON_HINTS[reason]}"
        super().__init__(f"{message} ({detail})" if detail else message)


def classify(exc: BaseException) -> DialReason:
    chain = list(causes(exc))
    if any(isinstance(e, PeerIDMismatchesPubkey) or _PEER_ID_MISMATCH_TEXT in str(e) for e in chain):
        return "wrong-peer-id"
    if any((type(e).__module__, type(e).__name__) == _KEY_MISMATCH_ERROR for e in chain):
        return "key-mismatch"
    if any(any(text in str(e) for text in _LIMIT_TEXTS) for e in chain):
        return "refused"
    if any(isinstance(e, MuxerUpgradeFailure) for e in chain):
        # The peer hung up right after the security handshake proved who we are: a PyAgent peer does
        # that to a peer off its allow-list (py-libp2p has no message to say so).
        return "refused"
    if any(isinstance(e, OpenConnectionError | OSError) for e in chain):
        return "unreachable"
    if any(isinstance(e, SecurityUpgradeFailure | HandshakeFailure) for e in chain):
        return "security"
    return "unreachable"


def nothing_listens(exc: BaseException) -> bool:
    """The address answered and refused the connection: a host that is up, with no process listening on
    that port. Timeouts and our own network's errors (no route, network down) are not refusals."""
    return any(isinstance(e, ConnectionRefusedError) for e in causes(exc))


def detail_of(exc: BaseException) -> str:
    """What to show after a dial's reason: the root cause, unless the reason says it better."""
    if any(isinstance(e, MuxerUpgradeFailure) for e in causes(exc)):
        return "it closed the connection right after the security handshake"
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """Every exception behind ``exc``: its causes, contexts, and the members of exception groups and of
    py-libp2p's ``MultiError`` (which keeps per-address dial errors in ``.errors``, not in the chain)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if isinstance(current, MultiError):
            pending.extend(current.errors)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
