"""Real ``pyagent daemon`` processes on 127.0.0.1, each with its own home: for the demo and the tests.

Everything goes through the process boundary and the control API, as it would for an operator, so what
works here works on a real machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyagent import config, identity
from pyagent.config import CONFIG_FILE, IDENTITY_FILE
from pyagent.controlclient import ControlClient, DaemonNotRunning

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
LOOPBACK_ANY_PORT = "/ip4/127.0.0.1/tcp/0"
LOG_TAIL_LINES = 40


def init_home(
    home: Path, listen: str = LOOPBACK_ANY_PORT, swarm_key_file: str = "", config_extra: str = ""
) -> str:
    """Create a node home (identity + config, with ``config_extra``'s TOML tables appended) and return
    its peer id."""
    home.mkdir(mode=0o700, parents=True)
    key_pair = identity.create(home / IDENTITY_FILE)
    (home / CONFIG_FILE).write_text(config.render([listen], swarm_key_file) + config_extra)
    return identity.peer_id_of(key_pair)


@dataclass
class LocalPeer:
    name: str
    home: Path
    extra_args: list[str] = field(default_factory=list)
    # Wraps the daemon's command line, e.g. ``ip netns exec NS`` to run it on a namespaced test host.
    command_prefix: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    peer_id: str = ""
    addr: str = ""

    @property
    def log_path(self) -> Path:
        return self.home / "daemon.log"

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.home, timeout_s=15.0)

    def call(self, method: str, **params: Any) -> Any:
        return self.client.call(method, **params)

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``pyagent --home <this peer's home> ARGS...``, as an operator types it; output captured."""
        return subprocess.run(
            [sys.executable, "-m", "pyagent.cli", "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.command_prefix,
                    sys.executable,
                    "-m",
                    "pyagent.cli",
                    "--home",
                    str(self.home),
                    "daemon",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode}; see {self.log_path}"
                )
            try:
                info = self.call("id")
            except DaemonNotRunning:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start within {timeout_s:.0f} s") from None
                time.sleep(0.05)
                continue
            self.peer_id, self.addr = info["peer_id"], info["addrs"][0]
            return

    def terminate(self) -> None:
        """Ask for a clean shutdown (SIGTERM) without waiting for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> int:
        """SIGTERM, wait, and SIGKILL only if it hangs. Returns the exit code."""
        self.terminate()
        return self.wait_stopped(timeout_s)

    def wait_stopped(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> int:
        if self.process is None:
            return 0
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """``kill -9``: no shutdown path runs."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def last_log_line(self) -> str:
        """The log's last line: for a daemon that crashed, the exception that ended it."""
        # Strip the frame that trio's exception groups draw around a traceback.
        lines = [line.strip(" |+-") for line in self.log_text().splitlines() if line.strip(" |+-")]
        return lines[-1] if lines else "(empty log)"


@dataclass(frozen=True)
class Placement:
    """Where one daemon of a mesh runs: its listen address, and a wrapper of its command line."""

    listen: str = LOOPBACK_ANY_PORT
    command_prefix: tuple[str, ...] = ()


def start_mesh(
    base: Path,
    count: int,
    swarm_key_file: str = "",
    join: bool = True,
    placements: Sequence[Placement] = (),
    name_prefix: str = "node",
    config_extra: str = "",
) -> list[LocalPeer]:
    """Start ``count`` daemons under ``base`` and wait until each answers its control API. With ``join``,
    the first starts a mesh and the others bootstrap from it; without, each stays alone. ``placements``
    (one per daemon, default loopback) puts them elsewhere, e.g. on namespaced test hosts."""
    placements = list(placements) or [Placement()] * count
    assert len(placements) == count, "one placement per daemon"
    peers: list[LocalPeer] = []
    for index, placement in enumerate(placements, start=1):
        name = f"{name_prefix}-{index}"
        peer = LocalPeer(name, base / name, command_prefix=list(placement.command_prefix))
        init_home(peer.home, placement.listen, swarm_key_file, config_extra)
        if join and peers:
            peer.extra_args += ["--bootstrap", peers[0].addr]
        peer.start()
        if index == 1:
            peer.wait_ready()
        peers.append(peer)
    for peer in peers[1:]:
        peer.wait_ready()
    return peers


def member_states(peer: LocalPeer) -> dict[str, str]:
    """``peer``'s view of the mesh: peer id -> state."""
    return {m["peer"]: m["state"] for m in peer.call("members")}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Poll ``condition`` until it holds and return the seconds it took; ``TimeoutError`` names ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - started


def converged(peers: list[LocalPeer]) -> bool:
    """Every peer sees every other (and itself) alive."""
    ids = {p.peer_id for p in peers}
    return all(member_states(p) == dict.fromkeys(ids, "alive") for p in peers)


def connect_all(peers: list[LocalPeer]) -> None:
    for index, peer in enumerate(peers):
        for other in peers[:index]:
            peer.call("connect", addr=other.addr)


def stop_all(peers: list[LocalPeer]) -> list[int]:
    """Stop all in parallel: each gets SIGTERM first, then each is waited for."""
    for peer in peers:
        peer.terminate()
    return [peer.wait_stopped() for peer in peers]


@contextmanager
def logs_on_failure(peers: Sequence[LocalPeer]) -> Iterator[None]:
    """Print the tail of every daemon's log when the block fails: what the test saw is not enough."""
    try:
        yield
    except BaseException:
        for peer in peers:
            tail = peer.log_text().splitlines()[-LOG_TAIL_LINES:]
            print(f"----- {peer.name} ({peer.peer_id}) log tail -----", *tail, sep="\n")
        raise
