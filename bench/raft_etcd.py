"""etcd for ``bench/raft.py``: Debian's ``etcd-server``, 3 members on 127.0.0.1, driven through its gRPC API.

The members run with etcd's defaults (a WAL fsync per Raft ready batch, so group commit) in a temporary
directory, and are killed and removed afterwards. The driver sends every request to the leader, found with
``Maintenance.Status`` on each member: ``KV.Put``, and ``KV.Range`` of one key without ``serializable``
(a linearizable read: etcd's ReadIndex). It uses ``grpcio`` with a descriptor of the few messages it
needs, built here from etcd's ``rpc.proto`` field numbers (no protoc needed), on one channel (one HTTP/2
connection, requests multiplexed). Two drivers:

- ``aio`` (the default): grpcio's asyncio API, the generator running on asyncio. It is grpcio's cheapest
  API: measured here against the other, about 30% less client CPU per request and 15-25% more puts/s
  at 16 and 64 clients, so it is the fair choice for etcd.
- ``futures``: grpcio's non-blocking futures under trio, like the other systems' loop; grpc's C core and
  its polling thread do the I/O, and each completion callback wakes its trio task.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from raft_load import exited

MEMBERS = 3
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
ETCD = "etcd"

try:
    import grpc
    import grpc.aio
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as error:  # pragma: no cover - reported as the reason etcd is skipped
    grpc = None
    IMPORT_ERROR = str(error)
else:
    IMPORT_ERROR = ""

# etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto, only the fields used here (proto3, so the
# fields left out are skipped on decoding and default on encoding).
_MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "ResponseHeader": [("cluster_id", 1, "uint64"), ("member_id", 2, "uint64"), ("revision", 3, "int64"),
                       ("raft_term", 4, "uint64")],
    "KeyValue": [("key", 1, "bytes"), ("create_revision", 2, "int64"), ("mod_revision", 3, "int64"),
                 ("version", 4, "int64"), ("value", 5, "bytes"), ("lease", 6, "int64")],
    "PutRequest": [("key", 1, "bytes"), ("value", 2, "bytes"), ("lease", 3, "int64"), ("prev_kv", 4, "bool")],
    "PutResponse": [("header", 1, ".etcdserverpb.ResponseHeader")],
    "RangeRequest": [("key", 1, "bytes"), ("range_end", 2, "bytes"), ("limit", 3, "int64"),
                     ("revision", 4, "int64"), ("serializable", 7, "bool")],
    "RangeResponse": [("header", 1, ".etcdserverpb.ResponseHeader"), ("kvs", 2, "*.etcdserverpb.KeyValue"),
                      ("more", 3, "bool"), ("count", 4, "int64")],
    "StatusRequest": [],
    "StatusResponse": [("header", 1, ".etcdserverpb.ResponseHeader"), ("version", 2, "string"),
                       ("dbSize", 3, "int64"), ("leader", 4, "uint64"), ("raftIndex", 5, "uint64"),
                       ("raftTerm", 6, "uint64")],
}  # fmt: skip


def _message_classes() -> dict[str, Any]:
    field_type = descriptor_pb2.FieldDescriptorProto
    scalar = {
        "bytes": field_type.TYPE_BYTES,
        "string": field_type.TYPE_STRING,
        "bool": field_type.TYPE_BOOL,
        "int64": field_type.TYPE_INT64,
        "uint64": field_type.TYPE_UINT64,
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="pyagent_bench/etcd_rpc_subset.proto", package="etcdserverpb", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            repeated = kind.startswith("*")
            kind = kind.lstrip("*")
            field = message.field.add(
                name=field_name,
                number=number,
                label=field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL,
            )
            if kind.startswith("."):
                field.type, field.type_name = field_type.TYPE_MESSAGE, kind
            else:
                field.type = scalar[kind]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"etcdserverpb.{name}"))
            for name in _MESSAGES}  # fmt: skip


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Etcd:
    name = "etcd"

    def __init__(self, driver: str = "aio") -> None:
        assert driver in ("aio", "futures")
        self.driver_kind = driver
        self.backend = "asyncio" if driver == "aio" else "trio"
        api = (
            "grpc.aio on asyncio"
            if driver == "aio"
            else "grpcio futures under trio (each completion wakes its task)"
        )
        self.how = (
            "etcd (Debian etcd-server) 3 members on 127.0.0.1, default fsync; "
            f"{api}, one channel to the leader (KV.Put; KV.Range linearizable)"
        )
        self.processes: list[subprocess.Popen[bytes]] = []
        self.client_ports: list[int] = []
        self.leader_port = 0
        self._notes: list[str] = []
        self._messages: dict[str, Any] = {}

    def unavailable(self) -> str | None:
        if grpc is None:
            return f"grpcio/protobuf not importable ({IMPORT_ERROR}); pip install -e '.[bench]' installs them"
        if shutil.which(ETCD) is None:
            return "no etcd binary on PATH (apt-get install -y etcd-server)"
        return None

    def version(self) -> str:
        out = subprocess.run([ETCD, "--version"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else "unknown"

    def start(self, workdir: Path) -> None:
        self._messages = _message_classes()
        ports = _free_ports(2 * MEMBERS)
        self.client_ports, peer_ports = ports[:MEMBERS], ports[MEMBERS:]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{peer_ports[i]}" for i in range(MEMBERS))
        for i in range(MEMBERS):
            client_url, peer_url = (
                f"http://127.0.0.1:{self.client_ports[i]}",
                f"http://127.0.0.1:{peer_ports[i]}",
            )
            log = (workdir / f"m{i}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [
                        ETCD,
                        "--name", f"m{i}",
                        "--data-dir", str(workdir / f"m{i}"),
                        "--listen-client-urls", client_url,
                        "--advertise-client-urls", client_url,
                        "--listen-peer-urls", peer_url,
                        "--initial-advertise-peer-urls", peer_url,
                        "--initial-cluster", cluster,
                        "--initial-cluster-state", "new",
                        "--initial-cluster-token", "pyagent-bench",
                        "--logger", "zap",
                        "--log-level", "warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )  # fmt: skip
            log.close()
        self.leader_port = self._wait_leader()
        index = self.client_ports.index(self.leader_port)
        self._notes = [
            f"{self.version()}; leader m{index} (127.0.0.1:{self.leader_port}) takes every request"
        ]

    def _status(self, port: int) -> Any:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/etcdserverpb.Maintenance/Status",
                request_serializer=self._messages["StatusRequest"].SerializeToString,
                response_deserializer=self._messages["StatusResponse"].FromString,
            )
            return call(self._messages["StatusRequest"](), timeout=2.0)

    def _wait_leader(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"an etcd member exited with code {process.returncode}")
            try:
                statuses = {port: self._status(port) for port in self.client_ports}
                leaders = {status.leader for status in statuses.values()}
                if len(leaders) == 1 and 0 not in leaders:
                    (leader,) = leaders
                    for port, status in statuses.items():
                        if status.header.member_id == leader:
                            return port
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd elected no leader within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes = []

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def exited(self) -> list[str]:
        return exited([(f"m{i}", p) for i, p in enumerate(self.processes)])

    def notes(self) -> list[str]:
        return self._notes

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[EtcdAioDriver | EtcdFuturesDriver]:
        target = f"127.0.0.1:{self.leader_port}"
        if self.driver_kind == "aio":
            async with grpc.aio.insecure_channel(target) as channel:
                yield EtcdAioDriver(channel, self._messages)
        else:
            with grpc.insecure_channel(target) as channel:
                yield EtcdFuturesDriver(channel, self._messages, trio.lowlevel.current_trio_token())


def _methods(channel: Any, messages: dict[str, Any]) -> tuple[Any, Any]:
    put = channel.unary_unary(
        "/etcdserverpb.KV/Put",
        request_serializer=messages["PutRequest"].SerializeToString,
        response_deserializer=messages["PutResponse"].FromString,
    )
    range_ = channel.unary_unary(
        "/etcdserverpb.KV/Range",
        request_serializer=messages["RangeRequest"].SerializeToString,
        response_deserializer=messages["RangeResponse"].FromString,
    )
    return put, range_


class EtcdAioDriver:
    def __init__(self, channel: Any, messages: dict[str, Any]) -> None:
        self._put_request, self._range_request = messages["PutRequest"], messages["RangeRequest"]
        self._put, self._range = _methods(channel, messages)

    async def put(self, client: int, key: bytes, value: bytes) -> None:
        await self._put(self._put_request(key=key, value=value), timeout=CALL_TIMEOUT_S)

    async def get(self, client: int, key: bytes) -> bytes | None:
        reply = await self._range(self._range_request(key=key), timeout=CALL_TIMEOUT_S)
        return bytes(reply.kvs[0].value) if reply.kvs else None


class EtcdFuturesDriver:
    def __init__(self, channel: Any, messages: dict[str, Any], token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._put_request, self._range_request = messages["PutRequest"], messages["RangeRequest"]
        self._put, self._range = _methods(channel, messages)

    async def _call(self, method: Any, request: Any) -> Any:
        done = trio.Event()
        token = self._token

        def wake(_future: Any) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = method.future(request, timeout=CALL_TIMEOUT_S)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

    async def put(self, client: int, key: bytes, value: bytes) -> None:
        await self._call(self._put, self._put_request(key=key, value=value))

    async def get(self, client: int, key: bytes) -> bytes | None:
        reply = await self._call(self._range, self._range_request(key=key))
        return bytes(reply.kvs[0].value) if reply.kvs else None
