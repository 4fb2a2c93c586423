"""``pyagent demo``: a local mesh of real daemon processes on 127.0.0.1, shown working.

Each daemon is a separate ``pyagent daemon`` process with its own home in a temporary directory; the demo
drives them only through their control APIs, exactly as an operator's CLI would. It shows, in order:
1. the mesh forming: node-1 starts it, the others join through it and gossip finds everyone;
2. every node pinging every other through the sans-I/O ping core;
3. the sharded KV store (``demo_kv``): writes keep going while a shard's leader is killed with SIGKILL
   and restarted, and every acknowledged write is read back;
4. LoRA delta averaging (``demo_lora``): every node's peer fine-tunes an adapter on its own data, the
   mesh merges the deltas, and the merged adapter beats each local one on held-out data;
5. failure detection: one node is killed with SIGKILL and the survivors' view of it goes from alive to
   suspect to dead, with timings;
6. then the survivors keep pinging until the duration ends or Ctrl-C, and stop cleanly.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from pyagent import demo_kv, demo_lora
from pyagent.controlclient import ControlError
from pyagent.localmesh import LocalPeer, converged, member_states, start_mesh, stop_all, wait_until
from pyagent.proto import membership

ROUND_INTERVAL_S = 1.0
PING_ROUNDS_BEFORE_KILL = 2
CONVERGE_TIMEOUT_S = 30.0
WATCH_POLL_S = 0.25


def _say(message: str) -> None:
    print(message, flush=True)


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}…{peer_id[-4:]}"


def show_round(peers: list[LocalPeer], started: float) -> bool:
    """Ping every connected pair once and print one line per node. True when every pair answered."""
    names = {p.peer_id: p.name for p in peers}
    complete = True
    _say(f"-- t={time.monotonic() - started:5.1f}s")
    for peer in peers:
        cells = []
        for other in peers:
            if other is peer:
                continue
            try:
                rtt_ms = peer.call("ping", peer=other.peer_id)["rtt_us"] / 1000
                cells.append(f"{names[other.peer_id]} {rtt_ms:6.2f} ms")
            except ControlError as exc:
                complete = False
                cells.append(f"{names[other.peer_id]} ping failed ({exc})")
        _say(f"   {peer.name} ({_short(peer.peer_id)})  " + "  ".join(cells))
    return complete


def watch_failure(victim: LocalPeer, survivors: list[LocalPeer]) -> bool:
    """Kill ``victim`` and print the survivors' view of it at each change, until all see it dead."""
    bound_s = membership.LAN.dead_everywhere_bound_ms(len(survivors) + 1) / 1000
    _say(
        f"killing {victim.name} with SIGKILL; the survivors should see it suspect, then dead "
        f"(LAN preset: typically 3-5 s; the config's worst-case bound is {bound_s:.0f} s)"
    )
    victim.kill()
    killed = time.monotonic()
    firsts: dict[str, float] = {}
    last_view: list[str] = []
    while time.monotonic() - killed < bound_s:
        view = [member_states(s).get(victim.peer_id, "?") for s in survivors]
        elapsed = time.monotonic() - killed
        if view != last_view:
            _say(
                f"   +{elapsed:4.1f}s  "
                + "  ".join(f"{s.name}: {v}" for s, v in zip(survivors, view, strict=True))
            )
            last_view = view
        for state in ("suspect", "dead"):
            if state not in firsts and all(v in (state, "dead") for v in view):
                firsts[state] = elapsed
        if "dead" in firsts:
            _say(
                f"{victim.name} suspect everywhere after {firsts['suspect']:.1f} s, "
                f"dead everywhere after {firsts['dead']:.1f} s (Serf on this machine: 5.5-8.5 s)"
            )
            return True
        time.sleep(WATCH_POLL_S)
    _say(f"{victim.name} was not declared dead everywhere within {bound_s:.0f} s")
    return False


def main(count: int, duration_s: float | None) -> int:
    base = Path(tempfile.mkdtemp(prefix="pyagent-demo-"))
    peers: list[LocalPeer] = []
    ok = True
    started = time.monotonic()
    try:
        _say(f"starting {count} daemons on 127.0.0.1 (homes and logs under {base})")
        _say("node-1 starts the mesh; the others join with --bootstrap node-1")
        peers = start_mesh(base, count)
        for peer in peers:
            _say(f"   {peer.name} up: {peer.addr}")
        took = wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "membership convergence")
        _say(f"membership converged: every node sees all {count} alive, {took:.2f} s after the last start")
        _say(f"pinging over /pyagent/ping/1.0.0 every {ROUND_INTERVAL_S:g} s")
        for _ in range(PING_ROUNDS_BEFORE_KILL):
            ok &= show_round(peers, started)
            time.sleep(ROUND_INTERVAL_S)
        if count >= 3:
            ok &= demo_kv.show_kv(peers, _say)
            ok &= demo_lora.show_lora(peers, _say)
            ok &= watch_failure(peers[-1], peers[:-1])
            live = peers[:-1]
        else:
            live = peers
        until = f"until t={duration_s:g} s" if duration_s else "until Ctrl-C"
        _say(f"the survivors keep pinging {until}")
        while duration_s is None or time.monotonic() - started < duration_s:
            ok &= show_round(live, started)
            time.sleep(ROUND_INTERVAL_S)
    except KeyboardInterrupt:
        _say("\ninterrupted")
    except (RuntimeError, TimeoutError, ControlError) as exc:
        _say(f"demo failed: {exc}")
        ok = False
    _say("stopping daemons (each leaves the mesh gracefully)")
    codes = stop_all(peers)
    for peer, code in zip(peers, codes, strict=True):
        _say(f"   {peer.name} stopped (exit code {code}{', killed by the demo' if code == -9 else ''})")
        if code not in (0, -9):
            _say(f"      its log ends: {peer.last_log_line()}")
    ok &= all(code in (0, -9) for code in codes)
    if ok:
        shutil.rmtree(base, ignore_errors=True)
        _say(
            "demo finished: the mesh formed, every ping answered, no acknowledged write was lost, the merged "
            "adapter beat every local one, the crash was detected, all stopped cleanly"
        )
    else:
        _say(f"demo finished with errors; logs kept in {base}")
    return 0 if ok else 1
