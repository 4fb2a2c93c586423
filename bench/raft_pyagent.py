"""PyAgent for ``bench/raft.py``: 3 ``pyagent daemon`` processes on 127.0.0.1 with default config.

The daemons are started as the demo and the tests start them (``pyagent.localmesh``: ``init`` with a
loopback address, then ``daemon``, the second and third with ``--bootstrap`` at the first), so the mesh has
its default shard layout (64 shards, 3 replicas, leaders spread over the 3 peers). The driver opens one
``pyagent.client.KvClient`` per daemon (each talks to its daemon's control socket, requests multiplexed)
and spreads the closed-loop clients over them round-robin (client i uses daemon i mod 3); a daemon
forwards each request to its shard's leader. Gets are linearizable (``stale=False``, ReadIndex).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from raft_load import describe, exited

MEMBERS = 3
READY_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0
SETTLE_QUIET_S = 3.0
SETTLE_TIMEOUT_S = 60.0

try:
    from pyagent.localmesh import LocalPeer, start_mesh, stop_all
except ImportError as error:  # pragma: no cover - reported as the reason PyAgent is skipped
    LOCALMESH_ERROR = f"pyagent is not importable ({error}); run ./dev setup"
else:
    LOCALMESH_ERROR = ""


def _client_class() -> Any:
    from pyagent.client import KvClient

    return KvClient


class PyAgent:
    name = "pyagent"
    backend = "trio"
    how = (
        "PyAgent 3 daemons on 127.0.0.1, default config (64 shards x 3 replicas); one KvClient per "
        "daemon (control socket, multiplexed), client i on daemon i mod 3, which forwards to the shard's "
        "leader; gets linearizable (ReadIndex)"
    )

    def __init__(self) -> None:
        self.peers: list[LocalPeer] = []
        self._notes: list[str] = []

    def unavailable(self) -> str | None:
        if LOCALMESH_ERROR:
            return LOCALMESH_ERROR
        try:
            _client_class()
        except ImportError as error:
            return (
                f"pyagent.client.KvClient is not there yet ({error}): issue 13's trio client has not "
                "landed, so the PyAgent side cannot run"
            )
        return None

    def start(self, workdir: Path) -> None:
        self.peers = start_mesh(workdir, MEMBERS)
        took = trio.run(self._wait_writable)
        self._notes = [f"first put accepted {took:.1f} s after the 3 daemons answered their control API"]
        self._notes += self._wait_settled()

    async def _wait_writable(self) -> float:
        """With default config the mesh takes writes with no manual step; wait until a put through every
        daemon succeeds."""
        started = time.monotonic()
        deadline = started + READY_TIMEOUT_S
        client_class = _client_class()
        for peer in self.peers:
            while True:
                try:
                    with trio.fail_after(CALL_TIMEOUT_S):
                        async with client_class.open(peer.home) as kv:
                            await kv.put(b"bench/ready", peer.name.encode())
                    break
                except Exception as error:
                    if peer.process is not None and peer.process.poll() is not None:
                        raise RuntimeError(
                            f"{peer.name} exited with code {peer.process.returncode}; see {peer.log_path}"
                        ) from error
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{peer.name} took no put within {READY_TIMEOUT_S:.0f} s: {describe(error)}; "
                            f"see {peer.log_path}"
                        ) from error
                    await trio.sleep(0.2)
        return time.monotonic() - started

    def _leaders(self) -> dict[Any, str | None] | str:
        """Each shard's leader (a daemon's name) in node-1's view, from the control API's shard listing
        (what ``pyagent shards`` prints); a shard not yet fully replicated counts as leaderless. A string
        says why the listing could not be read."""
        try:
            shards = self.peers[0].call("kv.shards")
        except Exception as error:
            return f"shard layout not read ({describe(error)})"
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            return f"shard layout not understood: {str(shards)[:200]}"
        names = {p.peer_id: p.name for p in self.peers}
        return {
            s.get("shard"): (
                names.get(str(s.get("leader")), str(s.get("leader")))
                if s.get("leader") is not None and len(s.get("voters") or ()) >= MEMBERS
                else None
            )
            for s in shards
        }

    def _wait_settled(self) -> list[str]:
        """Wait until every shard has its 3 voters and a leader, and no leader has moved for
        ``SETTLE_QUIET_S`` (placement moves leaders to spread them over the peers): the figures are of
        the steady layout. Returns the layout, for the notes."""
        started = time.monotonic()
        last: dict[Any, str | None] | str = {}
        quiet_since = started
        while True:
            leaders = self._leaders()
            now = time.monotonic()
            if isinstance(leaders, str):
                return [leaders]
            if leaders != last:
                last, quiet_since = leaders, now
            complete = bool(leaders) and None not in leaders.values()
            if complete and now - quiet_since >= SETTLE_QUIET_S:
                settled = f"settled {now - started:.1f} s after the first put"
                break
            if now - started > SETTLE_TIMEOUT_S:
                settled = f"still moving {SETTLE_TIMEOUT_S:.0f} s after the first put; measured anyway"
                break
            time.sleep(0.5)
        counts = Counter(leader or "none" for leader in leaders.values())
        spread = ", ".join(f"{peer}: {count}" for peer, count in sorted(counts.items()))
        return [f"{len(leaders)} shards, leaders per peer (node-1's view) {spread}; {settled}"]

    def stop(self) -> None:
        if self.peers:
            stop_all(self.peers)
        self.peers = []

    def server_pids(self) -> list[int]:
        return [p.process.pid for p in self.peers if p.process is not None]

    def exited(self) -> list[str]:
        return exited([(p.name, p.process) for p in self.peers])

    def notes(self) -> list[str]:
        return self._notes

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[PyAgentDriver]:
        client_class = _client_class()
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client_class.open(p.home)) for p in self.peers]
            yield PyAgentDriver(clients)


class PyAgentDriver:
    def __init__(self, clients: Sequence[Any]) -> None:
        self._clients = list(clients)
        self._count = len(clients)

    async def put(self, client: int, key: bytes, value: bytes) -> None:
        await self._clients[client % self._count].put(key, value)

    async def get(self, client: int, key: bytes) -> bytes | None:
        value: bytes | None = await self._clients[client % self._count].get(key)
        return value
