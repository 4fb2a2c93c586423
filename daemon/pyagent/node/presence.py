"""PeerConnected / PeerDisconnected, in order, once per peer presence.

A presence starts with the first connection to a peer and ends when its last connection closes. Its task
identifies the peer (bounded by a deadline; on failure it reports what is already known), emits
PeerConnected, waits for the end, then emits PeerDisconnected. A peer that leaves before it was
announced is never announced. A new presence of the same peer waits until the previous one has emitted
its PeerDisconnected, so a consumer never sees two PeerConnected in a row.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from pyagent.node.inbox import EventSender
from pyagent.proto.events import Event, PeerConnected, PeerDisconnected

logger = logging.getLogger(__name__)

Identify = Callable[[str], Awaitable[PeerConnected]]
KnownInfo = Callable[[str], PeerConnected]


@dataclass
class _Presence:
    predecessor: _Presence | None
    gone: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    identify_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class PeerPresence:
    def __init__(
        self,
        events: EventSender[Event],
        identify: Identify,
        known_info: KnownInfo,
        identify_timeout_s: float,
    ) -> None:
        self._events = events
        self._identify = identify
        self._known_info = known_info
        self._identify_timeout_s = identify_timeout_s
        # One entry per connected (or just-departed) peer: bounded by the host's connections_max.
        self._current: dict[str, _Presence] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery | None) -> None:
        """None detaches: during shutdown, connection events no longer start or end presences."""
        self._nursery = nursery

    def connected(self, peer: str) -> None:
        if self._nursery is None:
            return
        current = self._current.get(peer)
        if current is not None and not current.gone.is_set():
            return  # a second connection to a peer already present
        presence = self._current[peer] = _Presence(predecessor=current)
        self._nursery.start_soon(self._run, peer, presence)

    def disconnected(self, peer: str) -> None:
        """Call when the peer's last connection has closed."""
        current = self._current.get(peer)
        if current is not None:
            current.gone.set()
            current.identify_scope.cancel()

    async def _run(self, peer: str, presence: _Presence) -> None:
        try:
            if presence.predecessor is not None:
                await presence.predecessor.done.wait()
                presence.predecessor = None
            announcement = await self._identified(peer, presence)
            if presence.gone.is_set():
                return
            await self._events.send(announcement)
            await presence.gone.wait()
            await self._events.send(PeerDisconnected(peer))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            logger.debug("events channel closed; presence of %s not reported", peer)
        finally:
            presence.done.set()
            if self._current.get(peer) is presence:
                del self._current[peer]

    async def _identified(self, peer: str, presence: _Presence) -> PeerConnected:
        with presence.identify_scope, trio.move_on_after(self._identify_timeout_s):
            try:
                return await self._identify(peer)
            except Exception as exc:
                logger.info("identify of %s failed (%r); reporting what is known", peer, exc)
        return self._known_info(peer)
