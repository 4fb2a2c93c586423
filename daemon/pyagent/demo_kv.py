"""The KV part of ``pyagent demo``: writes keep going while a shard's leader is killed and comes back, and
nothing acknowledged is lost.

Writers put numbered keys through one daemon (which forwards each write to its shard's leader). Meanwhile
the leader of one shard is killed with SIGKILL and restarted from its disk. At the end every
acknowledged key is read back, through the daemon that was killed, and the counts are printed.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable

from pyagent.controlclient import ControlClient, ControlError, DaemonNotRunning
from pyagent.localmesh import LocalPeer, wait_until
from pyagent.proto.kv.placement import SHARDS_DEFAULT, shard_of

WRITERS = 4
REPLICATION_TIMEOUT_S = 60.0
DOWN_S = 3.0
AFTER_RESTART_S = 3.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _replicated(peer: LocalPeer, replicas: int) -> bool:
    shards = peer.call("kv.shards")
    return len(shards) == SHARDS_DEFAULT and all(len(s["voters"]) >= replicas and s["leader"] for s in shards)


def _leader_of(peers: list[LocalPeer], shard: int) -> LocalPeer:
    leader = next(s["leader"] for s in peers[0].call("kv.shards") if s["shard"] == shard)
    return next(p for p in peers if p.peer_id == leader)


class _Writers:
    """Threads that put ``demo/<writer>/<n>`` through one daemon until stopped; acknowledged keys kept."""

    def __init__(self, through: LocalPeer) -> None:
        self.through = through
        self.acknowledged: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(WRITERS)]

    def __enter__(self) -> _Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, writer: int) -> None:
        client = ControlClient(self.through.home, timeout_s=10)
        n = 0
        while not self._stop.is_set():
            key = f"demo/{writer}/{n}"
            try:
                client.call("kv.put", key=_b64(key), value=_b64(key))
            except (ControlError, DaemonNotRunning, OSError):
                with self._lock:
                    self.failed += 1
                continue
            with self._lock:
                self.acknowledged.append(key)
            n += 1


def show_kv(peers: list[LocalPeer], say: Callable[[str], None]) -> bool:
    """Run the KV part on a mesh of at least three daemons; True when nothing acknowledged was lost."""
    took = wait_until(lambda: _replicated(peers[0], 3), REPLICATION_TIMEOUT_S, "every shard on 3 peers")
    say(f"the KV store's {SHARDS_DEFAULT} shards each have 3 replicas and a leader ({took:.1f} s)")
    victim = _leader_of(peers, shard_of(b"demo/0/0", SHARDS_DEFAULT))
    through = next(p for p in peers if p is not victim)
    say(f"{WRITERS} writers put keys through {through.name}, which forwards each to its shard's leader")
    with _Writers(through) as writers:
        time.sleep(DOWN_S)
        before = writers.count()
        say(f"   {before} writes acknowledged; killing {victim.name} (a shard leader) with SIGKILL")
        victim.kill()
        time.sleep(DOWN_S)
        during = writers.count() - before
        say(f"   {during} writes acknowledged while {victim.name} was down; restarting it from its disk")
        victim.start()
        victim.wait_ready()
        time.sleep(AFTER_RESTART_S)
    total = len(writers.acknowledged)
    say(f"   {total} writes acknowledged in all ({writers.failed} attempts failed and were retried)")
    client = ControlClient(victim.home, timeout_s=30)
    lost = [k for k in writers.acknowledged if client.call("kv.get", key=_b64(k))["value"] != _b64(k)]
    if lost:
        say(f"LOST {len(lost)} acknowledged writes, e.g. {lost[:3]}")
        return False
    say(f"read back all {total} acknowledged keys through {victim.name}: none lost")
    return during > 0
