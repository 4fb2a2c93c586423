"""``pyagent demo``: a local mesh of real daemon processes on 127.0.0.1, shown working.

Each daemon is a separate ``pyagent daemon`` process with its own home in a temporary directory; the demo
drives them only through their control APIs, exactly as an operator's CLI would.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyagent import config, identity
from pyagent.config import CONFIG_FILE, IDENTITY_FILE
from pyagent.controlclient import ControlClient, ControlError, DaemonNotRunning

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
ROUND_INTERVAL_S = 1.0


@dataclass
class DemoPeer:
    name: str
    home: Path
    process: subprocess.Popen[bytes]
    client: ControlClient
    peer_id: str = ""
    addr: str = ""


def _say(message: str) -> None:
    print(message, flush=True)


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}…{peer_id[-4:]}"


def start_peer(base: Path, index: int) -> DemoPeer:
    home = base / f"node-{index}"
    home.mkdir(mode=0o700)
    identity.create(home / IDENTITY_FILE)
    (home / CONFIG_FILE).write_text(config.render(["/ip4/127.0.0.1/tcp/0"]))
    log = (home / "daemon.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pyagent.cli", "--home", str(home), "daemon"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return DemoPeer(f"node-{index}", home, process, ControlClient(home, timeout_s=10.0))


def wait_ready(peer: DemoPeer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if peer.process.poll() is not None:
            raise RuntimeError(
                f"{peer.name} exited with code {peer.process.returncode}; see {peer.home}/daemon.log"
            )
        try:
            info: dict[str, Any] = peer.client.call("id")
        except DaemonNotRunning:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name} did not start within {STARTUP_TIMEOUT_S:.0f} s") from None
            time.sleep(0.1)
            continue
        peer.peer_id, peer.addr = info["peer_id"], info["addrs"][0]
        return


def show_round(peers: list[DemoPeer], started: float) -> bool:
    """Ping every connected pair once and print one line per node. True when the mesh is complete."""
    names = {p.peer_id: p.name for p in peers}
    complete = True
    _say(f"-- t={time.monotonic() - started:5.1f}s")
    for peer in peers:
        cells = []
        connected = peer.client.call("peers")
        for other in connected:
            try:
                rtt = peer.client.call("ping", peer=other["peer"])["rtt_us"] / 1000
                cells.append(f"{names.get(other['peer'], _short(other['peer']))} {rtt:6.2f} ms")
            except ControlError as exc:
                cells.append(f"{names.get(other['peer'], '?')} ping failed ({exc})")
        complete &= len(connected) == len(peers) - 1
        _say(f"   {peer.name} ({_short(peer.peer_id)}) peers={len(connected)}  " + "  ".join(cells))
    return complete


def stop_all(peers: list[DemoPeer]) -> bool:
    for peer in peers:
        if peer.process.poll() is None:
            peer.process.send_signal(signal.SIGTERM)
    clean = True
    for peer in peers:
        try:
            code = peer.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            peer.process.kill()
            code = peer.process.wait()
        clean &= code == 0
        _say(f"   {peer.name} stopped (exit code {code})")
    return clean


def main(count: int, duration_s: float | None) -> int:
    base = Path(tempfile.mkdtemp(prefix="pyagent-demo-"))
    peers: list[DemoPeer] = []
    complete = False
    try:
        _say(f"starting {count} daemons on 127.0.0.1 (homes and logs under {base})")
        peers = [start_peer(base, index) for index in range(1, count + 1)]
        for peer in peers:
            wait_ready(peer)
            _say(f"   {peer.name} up: {peer.addr}")
        _say("connecting every node to every other node")
        for index, peer in enumerate(peers):
            for other in peers[:index]:
                peer.client.call("connect", addr=other.addr)
        suffix = f"for {duration_s:g} s" if duration_s else "until Ctrl-C"
        _say(f"pinging over /pyagent/ping/1.0.0 every {ROUND_INTERVAL_S:g} s {suffix}")
        started = time.monotonic()
        while duration_s is None or time.monotonic() - started < duration_s:
            complete = show_round(peers, started)
            time.sleep(ROUND_INTERVAL_S)
    except KeyboardInterrupt:
        _say("\ninterrupted")
    except (RuntimeError, ControlError) as exc:
        _say(f"demo failed: {exc}")
        complete = False
    finally:
        _say("stopping daemons")
        clean = stop_all(peers)
        failed = not (complete and clean)
        if failed:
            _say(f"logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    _say(
        "demo finished: mesh complete, all daemons stopped cleanly"
        if not failed
        else "demo finished with errors"
    )
    return 1 if failed else 0
