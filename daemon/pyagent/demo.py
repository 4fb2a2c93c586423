"""``pyagent demo``: a local mesh of real daemon processes on 127.0.0.1, shown working.

Each daemon is a separate ``pyagent daemon`` process with its own home in a temporary directory; the demo
drives them only through their control APIs, exactly as an operator's CLI would.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from pyagent.controlclient import ControlError
from pyagent.localmesh import LocalPeer, connect_all, start_mesh, stop_all

ROUND_INTERVAL_S = 1.0


def _say(message: str) -> None:
    print(message, flush=True)


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}…{peer_id[-4:]}"


def show_round(peers: list[LocalPeer], started: float) -> bool:
    """Ping every connected pair once and print one line per node. True when the mesh is complete."""
    names = {p.peer_id: p.name for p in peers}
    complete = True
    _say(f"-- t={time.monotonic() - started:5.1f}s")
    for peer in peers:
        cells = []
        connected = peer.call("peers")
        for other in connected:
            name = names.get(other["peer"], _short(other["peer"]))
            try:
                rtt_ms = peer.call("ping", peer=other["peer"])["rtt_us"] / 1000
                cells.append(f"{name} {rtt_ms:6.2f} ms")
            except ControlError as exc:
                cells.append(f"{name} ping failed ({exc})")
        complete &= len(connected) == len(peers) - 1
        _say(f"   {peer.name} ({_short(peer.peer_id)}) peers={len(connected)}  " + "  ".join(cells))
    return complete


def main(count: int, duration_s: float | None) -> int:
    base = Path(tempfile.mkdtemp(prefix="pyagent-demo-"))
    peers: list[LocalPeer] = []
    complete = False
    try:
        _say(f"starting {count} daemons on 127.0.0.1 (homes and logs under {base})")
        peers = start_mesh(base, count)
        for peer in peers:
            _say(f"   {peer.name} up: {peer.addr}")
        _say("connecting every node to every other node")
        connect_all(peers)
        until = f"for {duration_s:g} s" if duration_s else "until Ctrl-C"
        _say(f"pinging over /pyagent/ping/1.0.0 every {ROUND_INTERVAL_S:g} s {until}")
        started = time.monotonic()
        while duration_s is None or time.monotonic() - started < duration_s:
            complete = show_round(peers, started)
            time.sleep(ROUND_INTERVAL_S)
    except KeyboardInterrupt:
        _say("\ninterrupted")
    except (RuntimeError, ControlError) as exc:
        _say(f"demo failed: {exc}")
        complete = False
    _say("stopping daemons")
    codes = stop_all(peers)
    for peer, code in zip(peers, codes, strict=True):
        _say(f"   {peer.name} stopped (exit code {code})")
    ok = complete and all(code == 0 for code in codes)
    if ok:
        shutil.rmtree(base, ignore_errors=True)
        _say("demo finished: every node saw every other, and all stopped cleanly")
    else:
        _say(f"demo finished with errors; logs kept in {base}")
    return 0 if ok else 1
