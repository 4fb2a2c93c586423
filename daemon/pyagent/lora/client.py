"""``mesh.lora``: contribute a delta to a round of the mesh's averaging, and fetch the merged result.

Deltas are flat float32 arrays (``pyagent.lora.adapter`` flattens an adapter's tensors). They do not
travel through the control socket's JSON lines: the client writes a delta as ``.npy`` under the node's
home (``lora/contributions/``) and names the file, and the daemon answers a merged round with the file
it keeps under ``lora/merged/``. The control socket is owner-only, so the home is shared by both ends.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from pyagent.controlconn import ClientError, ControlConnection
from pyagent.proto.lora import MergeResult

CONTRIBUTIONS_DIR = Path("lora") / "contributions"
# A contribution is answered once the daemon has read and queued it.
CONTRIBUTE_TIMEOUT_S = 30.0
# A round ends by its deadline; this only bounds a daemon that stopped answering.
MERGED_TIMEOUT_S = 600.0
# While a round's peers are still forming, the daemon answers these; asking again may succeed.
RETRYABLE = frozenset({"busy"})


class LoraError(ClientError):
    """The daemon refused a LoRA request; ``code`` says why (``invalid``, ``stale_round``...)."""


class LoraClient:
    def __init__(self, connection: ControlConnection, home: Path) -> None:
        self._connection = connection
        self._home = home

    async def contribute(self, delta: npt.ArrayLike, weight: float, round: int | None = None) -> int:
        """Put ``delta`` (a flat float32 array) into round ``round`` (when None, the round after this
        peer's last) with ``weight`` (its sample count). Returns the round it went into."""
        array = np.ascontiguousarray(delta, dtype=np.float32)
        if array.ndim != 1:
            raise LoraError(f"a delta must be a flat array, got shape {array.shape}", "invalid")
        folder = self._home / CONTRIBUTIONS_DIR
        path = folder / f"{secrets.token_hex(8)}.npy"
        await trio.to_thread.run_sync(_save, folder, path, array)
        try:
            params: dict[str, Any] = {"file": str(path), "weight": float(weight)}
            if round is not None:
                params["round"] = round
            result = await self._call("lora.contribute", params, CONTRIBUTE_TIMEOUT_S)
        finally:
            path.unlink(missing_ok=True)
        return int(result["round"])

    async def merged(self, round: int, timeout_s: float = MERGED_TIMEOUT_S) -> MergeResult:
        """Round ``round``'s result on this peer, once the round has ended (by its deadline at latest)."""
        result = await self._call("lora.merged", {"round": round}, timeout_s)
        delta = await trio.to_thread.run_sync(_load, Path(result["file"]))
        return MergeResult(
            round=int(result["round"]),
            delta=delta,
            weight=float(result["weight"]),
            peers=tuple(result["peers"]),
            bytes_sent=int(result["bytes_sent"]),
            bytes_received=int(result["bytes_received"]),
            codec=str(result["codec"]),
        )

    async def status(self) -> dict[str, Any]:
        """What ``pyagent lora status`` shows: rounds, peers, bytes, codec and agreement."""
        result: dict[str, Any] = await self._call("lora.status", {}, CONTRIBUTE_TIMEOUT_S)
        return result

    async def _call(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        return await self._connection.call(
            method, params, timeout_s=timeout_s, retryable=RETRYABLE, error=LoraError
        )


def _save(folder: Path, path: Path, array: npt.NDArray[np.float32]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=False)


def _load(path: Path) -> npt.NDArray[np.float32]:
    array = np.load(path, allow_pickle=False)
    assert isinstance(array, np.ndarray)
    return array.astype(np.float32, copy=False)
