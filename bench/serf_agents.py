"""Serf agents on 127.0.0.1, run beside pyagent's daemons so that both are measured on one machine.

Debian's ``serf`` (``apt-get install serf``): each agent binds its own gossip port (UDP probes and
gossip, TCP push-pull) and its own RPC port, which ``serf members`` and ``serf join`` talk to.
SIGINT makes an agent leave gracefully before it exits (Serf's default); SIGKILL is a crash.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

GOSSIP_PORT_BASE = 17946
RPC_PORT_BASE = 17373
STARTUP_TIMEOUT_S = 10.0


def serf_binary() -> str | None:
    return shutil.which("serf")


@dataclass
class SerfAgent:
    name: str
    gossip_port: int
    rpc_port: int
    log_path: Path
    # A base64 gossip key: memberlist then seals every packet with AES-GCM, as our datagrams are sealed.
    encrypt_key: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "serf", "agent", f"-node={self.name}", f"-bind=127.0.0.1:{self.gossip_port}",
                    f"-rpc-addr={self.rpc_addr}", "-log-level=warn",
                    *([f"-encrypt={self.encrypt_key}"] if self.encrypt_key else []),
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def members(self) -> dict[str, str]:
        """Node name -> status (alive, failed, leaving, left) in this agent's view; empty if it is down."""
        done = subprocess.run(
            ["serf", "members", f"-rpc-addr={self.rpc_addr}", "-format=json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return {}
        return {m["name"]: m["status"] for m in json.loads(done.stdout)["members"]}

    def join(self, other: SerfAgent) -> None:
        subprocess.run(
            ["serf", "join", f"-rpc-addr={self.rpc_addr}", f"127.0.0.1:{other.gossip_port}"],
            capture_output=True, check=True,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def leave(self) -> None:
        """Graceful leave without waiting for the exit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_cluster(base: Path, count: int, encrypt: bool = False) -> list[SerfAgent]:
    """``count`` agents, the others joined to the first; returns once every agent answers its RPC. With
    ``encrypt``, all share one random gossip key (``serf agent -encrypt``)."""
    base.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(32)).decode() if encrypt else ""
    agents = [
        SerfAgent(f"serf-{i}", GOSSIP_PORT_BASE + i, RPC_PORT_BASE + i, base / f"serf-{i}.log", key)
        for i in range(1, count + 1)
    ]
    for agent in agents:
        agent.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for agent in agents:
        while not agent.members():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{agent.name} did not start; see {agent.log_path}")
            time.sleep(0.05)
    for agent in agents[1:]:
        agent.join(agents[0])
    return agents


def stop_cluster(agents: list[SerfAgent]) -> None:
    for agent in agents:
        agent.stop()
