"""The LoRA control methods: ``lora.contribute``, ``lora.merged`` and ``lora.status``.

A delta is a flat float32 array in an ``.npy`` file that the caller names (``pyagent.lora.client``
writes one under the home); the daemon reads its header first, so a file too large for the mesh's
limit is refused before it is read. A merged round is written to ``<home>/lora/merged/round-<n>.npy``,
where operators find the latest ``MERGED_KEPT`` rounds too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from pyagent.hookspecs import ControlMethod, NodeHandle
from pyagent.node.control import InvalidParams
from pyagent.proto.lora import AwaitMerged, Contribute, LoraStatus, MergeResult

MERGED_DIR = Path("lora") / "merged"
MERGED_KEPT = 16
# A round ends by its deadline (config, seconds); this only bounds a wedged core.
MERGED_WAIT_S = 3600.0


def methods() -> dict[str, ControlMethod]:
    return {"lora.contribute": contribute, "lora.merged": merged, "lora.status": status}


async def contribute(node: NodeHandle, params: dict[str, Any]) -> dict[str, Any]:
    """``lora.contribute {file, weight, round?}``: the delta in ``file`` starts this peer's round
    ``round`` (when absent, the round after this peer's last). Answers the round it joined."""
    path = _path_param(params, "file")
    weight = params.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise InvalidParams("parameter 'weight' must be a positive number (the delta's sample count)")
    before = await node.request(LoraStatus())
    assert isinstance(before, dict)
    if params.get("round") is not None:
        round_ = _round_param(params)
    else:
        # The round after this peer's last: peers that contribute every round stay in step.
        round_ = 0 if before["round"] is None else before["round"] + 1
    delta = await trio.to_thread.run_sync(_read_delta, path, int(before["numel_max"]))
    await node.request(Contribute(round_, delta, float(weight)))
    return {"round": round_}


async def merged(node: NodeHandle, params: dict[str, Any]) -> dict[str, Any]:
    """``lora.merged {round}``: round ``round``'s result on this peer, once the round has ended."""
    round_ = _round_param(params)
    result = await node.request(AwaitMerged(round_), timeout_s=MERGED_WAIT_S)
    assert isinstance(result, MergeResult)
    path = await trio.to_thread.run_sync(_keep_merged, node.home / MERGED_DIR, result.round, result.delta)
    return {
        "round": result.round,
        "file": str(path),
        "weight": result.weight,
        "peers": list(result.peers),
        "bytes_sent": result.bytes_sent,
        "bytes_received": result.bytes_received,
        "codec": result.codec,
    }


async def status(node: NodeHandle, params: dict[str, Any]) -> dict[str, Any]:
    """``lora.status``: rounds, peers, bytes sent and received, codec and agreement."""
    if params:
        raise InvalidParams(f"lora.status takes no parameters, got {sorted(params)}")
    result = await node.request(LoraStatus())
    assert isinstance(result, dict)
    return result


def _path_param(params: dict[str, Any], name: str) -> Path:
    value = params.get(name)
    if not isinstance(value, str) or not os.path.isabs(value):
        raise InvalidParams(f"parameter {name!r} must be an absolute path to an .npy file")
    return Path(value)


def _round_param(params: dict[str, Any]) -> int:
    value = params.get("round")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParams("parameter 'round' must be a non-negative integer")
    return value


def _read_delta(path: Path, values_max: int) -> npt.NDArray[np.float32]:
    """The flat float32 array in ``path``, refused (one line) when it is not one or is over the limit."""
    try:
        # Memory-mapped: the header is checked before a byte of the data is read.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidParams(f"cannot read a delta from {path}: {exc}") from None
    if not isinstance(mapped, np.ndarray) or mapped.ndim != 1 or mapped.dtype.kind != "f":
        raise InvalidParams(f"{path}: a delta must be a flat float array (an .npy of one dimension)")
    if mapped.size > values_max:
        raise InvalidParams(
            f"{path}: the delta has {mapped.size} values; this mesh takes at most {values_max}"
        )
    return np.array(mapped, dtype=np.float32)


def _keep_merged(folder: Path, round_: int, delta: npt.NDArray[np.float32]) -> Path:
    """Write ``delta`` as ``round-<round_>.npy`` (whole or not at all) and drop all but the newest
    ``MERGED_KEPT`` rounds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{round_}.npy"
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        np.save(out, delta, allow_pickle=False)
    partial.replace(path)
    kept = sorted(folder.glob("round-*.npy"), key=lambda p: int(p.stem.removeprefix("round-")))
    for old in kept[:-MERGED_KEPT]:
        old.unlink(missing_ok=True)
    return path
