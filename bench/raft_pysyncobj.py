"""PySyncObj for ``bench/raft.py``: a 3-node cluster on 127.0.0.1, 3 processes, driven through a tiny RPC.

Each node process (``python bench/raft_pysyncobj.py node ...``) hosts a ``SyncObj`` subclass holding a dict,
with two ``@replicated`` methods: ``put(key, value)`` and ``read(key)``. PySyncObj has no ReadIndex or lease
read, so a linearizable read is a replicated command too: it goes through the log and is answered when
applied on the leader. The node's SyncObj runs on its own thread (``autoTick``, PySyncObj's default mode);
the node's main thread serves the RPC with trio: msgpack messages over one TCP connection
(``[id, op, key, value]`` in, ``[id, error, value]`` out, many in flight), each request calling the
replicated method with a ``callback``, whose completion (on SyncObj's thread) hands the reply back to trio.

Durability: ``journalFile`` (PySyncObj's only persistent-log option) writes each entry into an mmap'd file
and never calls ``msync``/``fsync`` while running. An acknowledged entry survives the process being killed
(the page cache has it) but not a power loss or kernel crash: weaker than etcd's and PyAgent's fsync.

The driver asks the nodes who leads, and sends every request to the leader on one connection (requests
multiplexed; a writer task coalesces what is queued into one send, a reader task dispatches replies).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import msgpack
import trio

from raft_load import exited

MEMBERS = 3
START_TIMEOUT_S = 30.0
READ_BYTES = 1 << 16

try:
    import pysyncobj
except ImportError:  # pragma: no cover - reported as the reason PySyncObj is skipped
    pysyncobj = None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------------------------------- node side


def _node_main(args: argparse.Namespace) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class KvNode(SyncObj):  # type: ignore[misc]
        def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
            super().__init__(self_addr, partners, conf)
            self.data: dict[bytes, bytes] = {}

        @replicated  # type: ignore[misc]
        def put(self, key: bytes, value: bytes) -> None:
            self.data[key] = value

        @replicated  # type: ignore[misc]
        def read(self, key: bytes) -> bytes | None:
            return self.data.get(key)

    home = Path(args.dir)
    home.mkdir(parents=True, exist_ok=True)
    conf = SyncObjConf(
        journalFile=str(home / "journal"),
        fullDumpFile=str(home / "dump"),
        appendEntriesUseBatch=args.batch,
    )
    node = KvNode(args.addr, args.partners.split(","), conf)
    success = FAIL_REASON.SUCCESS

    async def serve_connection(stream: trio.SocketStream) -> None:
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[bytes](math.inf)
        pack = msgpack.Packer().pack

        def reply_later(request_id: int) -> Any:
            def done(result: Any, error: int) -> None:
                frame = pack([request_id, None if error == success else int(error), result])
                with suppress(trio.RunFinishedError):
                    token.run_sync_soon(send.send_nowait, frame)

            return done

        async def writer() -> None:
            async for frame in receive:
                frames = [frame]
                while True:
                    try:
                        frames.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await stream.send_all(b"".join(frames))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            unpacker = msgpack.Unpacker()
            while data := await stream.receive_some(READ_BYTES):
                unpacker.feed(data)
                for request_id, op, key, value in unpacker:
                    if op == "put":
                        node.put(key, value, callback=reply_later(request_id))
                    elif op == "get":
                        node.read(key, callback=reply_later(request_id))
                    else:  # status
                        leader = node._getLeader()
                        status = [node.selfNode.id, leader.id if leader is not None else None]
                        send.send_nowait(pack([request_id, None, status]))
            nursery.cancel_scope.cancel()

    async def serve() -> None:
        await trio.serve_tcp(serve_connection, args.rpc_port, host="127.0.0.1")

    trio.run(serve)


# -------------------------------------------------------------------------------------------- bench side


class PySyncObj:
    name = "pysyncobj"
    backend = "trio"

    def __init__(self, batch: bool = True) -> None:
        self.batch = batch
        self.how = (
            f"PySyncObj {getattr(pysyncobj, '__version__', '')} 3 processes, appendEntriesUseBatch={batch}, "
            "journalFile (mmap, no fsync); msgpack RPC on one TCP connection to the leader, requests "
            "multiplexed, each calling a @replicated method with a callback; gets are replicated commands "
            "(PySyncObj has no ReadIndex)"
        ).replace("PySyncObj  ", "PySyncObj ")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.rpc_ports: list[int] = []
        self.raft_addrs: list[str] = []
        self.leader_rpc_port = 0
        self.workdir: Path | None = None
        self._notes: list[str] = []

    def unavailable(self) -> str | None:
        if pysyncobj is None:
            return "pysyncobj is not importable (.venv/bin/pip install -e '.[bench]' installs it)"
        return None

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        ports = _free_ports(2 * MEMBERS)
        self.raft_addrs = [f"127.0.0.1:{port}" for port in ports[:MEMBERS]]
        self.rpc_ports = ports[MEMBERS:]
        for i in range(MEMBERS):
            partners = ",".join(a for a in self.raft_addrs if a != self.raft_addrs[i])
            log = (workdir / f"n{i}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable, os.path.abspath(__file__), "node",
                        "--addr", self.raft_addrs[i],
                        "--partners", partners,
                        "--rpc-port", str(self.rpc_ports[i]),
                        "--dir", str(workdir / f"n{i}"),
                        *([] if self.batch else ["--no-batch"]),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )  # fmt: skip
            log.close()
        self.leader_rpc_port = trio.run(self._wait_leader)
        index = self.rpc_ports.index(self.leader_rpc_port)
        version = getattr(pysyncobj, "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version

            version = dist_version("pysyncobj")
        self._notes = [f"pysyncobj {version}; leader n{index} ({self.raft_addrs[index]}) takes every request"]

    async def _wait_leader(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a PySyncObj node exited with code {process.returncode}")
            try:
                leaders = set()
                for port in self.rpc_ports:
                    async with RpcConnection.open(port) as connection:
                        _self_addr, leader = await connection.call("status", b"", b"")
                        leaders.add(leader)
                if len(leaders) == 1 and None not in leaders:
                    return self.rpc_ports[self.raft_addrs.index(leaders.pop())]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"PySyncObj elected no leader within {START_TIMEOUT_S:.0f} s")
            await trio.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes = []
        if self.workdir is not None:
            # PySyncObj's own warning that a follower dropped entries it had already applied.
            logs = [log.read_text(errors="replace") for log in self.workdir.glob("n*.log")]
            diverged = sum(text.count("may have diverged") for text in logs)
            if diverged:
                self._notes.append(
                    f"PySyncObj logged {diverged} 'truncating already-applied log entries ... state machine "
                    "may have diverged' warnings on its followers during the run"
                )

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def exited(self) -> list[str]:
        return exited([(f"n{i}", p) for i, p in enumerate(self.processes)])

    def notes(self) -> list[str]:
        return self._notes

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[PySyncObjDriver]:
        async with RpcConnection.open(self.leader_rpc_port) as connection:
            yield PySyncObjDriver(connection)


class RpcError(Exception):
    pass


class RpcConnection:
    """Many requests in flight on one TCP connection to a node."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._next_id = 0
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._send, self._queued = trio.open_memory_channel[bytes](math.inf)
        self._pack = msgpack.Packer().pack

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[RpcConnection]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with stream, trio.open_nursery() as nursery:
            connection = cls(stream)
            nursery.start_soon(connection._writer)
            nursery.start_soon(connection._reader)
            yield connection
            nursery.cancel_scope.cancel()

    async def _writer(self) -> None:
        async for frame in self._queued:
            frames = [frame]
            while True:
                try:
                    frames.append(self._queued.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._stream.send_all(b"".join(frames))

    async def _reader(self) -> None:
        unpacker = msgpack.Unpacker()
        while data := await self._stream.receive_some(READ_BYTES):
            unpacker.feed(data)
            for request_id, error, result in unpacker:
                waiter = self._waiting.pop(request_id, None)
                if waiter is not None:
                    waiter[1][:] = [error, result]
                    waiter[0].set()
        for event, slot in self._waiting.values():
            slot[:] = ["connection closed", None]
            event.set()

    async def call(self, op: str, key: bytes, value: bytes) -> Any:
        self._next_id += 1
        request_id = self._next_id
        done, slot = trio.Event(), []
        self._waiting[request_id] = (done, slot)
        self._send.send_nowait(self._pack([request_id, op, key, value]))
        try:
            await done.wait()
        finally:
            self._waiting.pop(request_id, None)
        error, result = slot
        if error is not None:
            raise RpcError(f"PySyncObj failed the {op}: reason {error}")
        return result


class PySyncObjDriver:
    def __init__(self, connection: RpcConnection) -> None:
        self._call = connection.call

    async def put(self, client: int, key: bytes, value: bytes) -> None:
        await self._call("put", key, value)

    async def get(self, client: int, key: bytes) -> bytes | None:
        result: bytes | None = await self._call("get", key, b"")
        return result


def main() -> None:
    if len(sys.argv) == 1:
        print("bench/raft_pysyncobj.py is a helper of bench/raft.py (which starts its nodes): run that")
        return
    parser = argparse.ArgumentParser(description="One PySyncObj node of bench/raft.py (started by it).")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node")
    node.add_argument("--addr", required=True)
    node.add_argument("--partners", required=True)
    node.add_argument("--rpc-port", type=int, required=True)
    node.add_argument("--dir", required=True)
    node.add_argument("--no-batch", dest="batch", action="store_false")
    _node_main(parser.parse_args())


if __name__ == "__main__":
    main()
