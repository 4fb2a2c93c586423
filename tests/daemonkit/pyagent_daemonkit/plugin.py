"""The hooks of the test-only daemonkit plugin: its two components and their control methods."""

from __future__ import annotations

from typing import Any

from pyagent.hookspecs import ControlMethod, NodeHandle, hookimpl
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent_daemonkit.blob import Blob, BlobStatus, SendBlob
from pyagent_daemonkit.journal import RECORDS_PER_BATCH, Append, Journal, ReadAll


@hookimpl
def pyagent_add_components(ctx: NodeContext) -> list[Component]:
    return [Journal(ctx.storage(Journal.name)), Blob()]


@hookimpl
def pyagent_control_methods() -> dict[str, ControlMethod]:
    return {
        "daemonkit.append": append,
        "daemonkit.read": read,
        "daemonkit.send_blob": send_blob,
        "daemonkit.blob_status": blob_status,
        "daemonkit.disconnect": disconnect,
    }


async def append(node: NodeHandle, params: dict[str, Any]) -> int:
    sequence = await node.request(Append(int(params.get("size", 100))))
    assert isinstance(sequence, int)
    return sequence


async def read(node: NodeHandle, params: dict[str, Any]) -> dict[str, Any]:
    found = await node.request(ReadAll())
    assert isinstance(found, dict)
    return {
        "records_per_batch": RECORDS_PER_BATCH,
        "found": {str(sequence): count for sequence, count in found.items()},
    }


async def send_blob(node: NodeHandle, params: dict[str, Any]) -> Any:
    command = SendBlob(
        params["peer"], tuple(params.get("addrs", ())), int(params["size"]), int(params["seed"])
    )
    return await node.request(command, timeout_s=float(params.get("timeout_s", 300)))


async def blob_status(node: NodeHandle, params: dict[str, Any]) -> Any:
    return await node.request(BlobStatus())


async def disconnect(node: NodeHandle, params: dict[str, Any]) -> None:
    """Close the connection to ``peer``: what a network fault does to a transfer on it."""
    await node.host.disconnect(params["peer"])  # type: ignore[attr-defined]
