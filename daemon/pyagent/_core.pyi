"""Type stub of ``pyagent._core``, the PyO3 binding of the Rust crate ``pyagent-core``.

Checked against the built module by ``python -m mypy.stubtest pyagent._core``.
"""

from collections.abc import Iterable
from typing import Any, ClassVar, Literal, final

from numpy import ndarray
from typing_extensions import Buffer

# Float32 arrays: anything with the buffer protocol. numpy's arrays say so to type checkers only from
# Python 3.12 on, so they are named too.
_Floats = Buffer | ndarray[Any, Any]

__all__ = [
    "BLAKE3_LEN_BYTES",
    "KEY_LEN_BYTES",
    "NONCE_LEN_BYTES",
    "LoraCodec",
    "LoraErrorFeedback",
    "LoraFrameError",
    "MultiRaft",
    "NotLeaderError",
    "RaftFatalError",
    "RaftReady",
    "StorageError",
    "Store",
    "XSalsa20",
    "__version__",
    "blake3",
    "blake3_chunks",
    "check_msgpack_shape",
    "format_swarm_key",
    "key_fingerprint",
    "lora_choose_codec",
    "lora_decode_into",
    "lora_frame_info",
    "parse_swarm_key",
]

__version__: str
KEY_LEN_BYTES: int
BLAKE3_LEN_BYTES: int
NONCE_LEN_BYTES: int

@final
class XSalsa20:
    """XSalsa20 keystream for one direction of a private-network connection (stateful position)."""

    # PyO3 constructs in ``__new__``; stubtest checks that, and callers write ``XSalsa20(key, nonce)``.
    def __new__(cls, key: bytes, nonce: bytes) -> XSalsa20: ...
    def apply(self, data: bytes) -> bytes: ...

def parse_swarm_key(text: str) -> bytes: ...
def format_swarm_key(key: bytes) -> str: ...
def key_fingerprint(key: bytes) -> str: ...

# Raises ValueError for a body that is not exactly one ext-free msgpack value within the bounds.
def check_msgpack_shape(body: bytes, depth_max: int, count_max: int) -> None: ...

# BLAKE3 (32 bytes) of bytes or any C-contiguous byte buffer (a memoryview is hashed uncopied); large
# inputs are hashed with the GIL released.
def blake3(data: Buffer) -> bytes: ...

# The 32-byte BLAKE3 hashes of consecutive ``chunk_size_bytes`` pieces of ``data``, concatenated.
def blake3_chunks(data: bytes, chunk_size_bytes: int) -> bytes: ...

class StorageError(OSError):
    """The store's disk or engine failed; the store refuses every later call (restart to recover)."""

@final
class Store:
    """The durable store behind ``pyagent.node.storage.StorageHandle`` (raft-engine in ``dir``).

    ``write`` takes ``(component, ops)`` pairs and applies them all in ONE engine write (one fsync when
    ``sync``), all or nothing; it returns the bytes written. An op is a tuple by code:
    ``(0, key, value)`` Put, ``(1, key)`` Delete, ``(2, start, end)`` DeleteRange,
    ``(3, log, first_index, entries)`` LogAppend, ``(4, log, from_index)`` LogTruncate,
    ``(5, log, to_index)`` LogCompact. ValueError: a batch the semantics refuse (a hole); nothing was
    written. IndexError: ``log_entries`` of entries not all held. StorageError: the disk or the engine.
    """

    def __new__(cls, path: str) -> Store: ...
    def close(self) -> None: ...
    def is_empty(self) -> bool: ...
    # (engine writes, of which fsync'd, bytes written) since the store was opened.
    def stats(self) -> tuple[int, int, int]: ...
    def write(self, batches: Iterable[tuple[str, Iterable[tuple[object, ...]]]], sync: bool) -> int: ...
    def get(self, component: str, key: bytes) -> bytes | None: ...
    def scan(
        self, component: str, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]: ...
    def log_bounds(self, component: str, log: str) -> tuple[int, int] | None: ...
    def log_entries(self, component: str, log: str, lo: int, hi: int) -> list[bytes]: ...

# --- multiraft: a sans-I/O multi-Raft driver on tikv's raft-rs 0.7 (rustcore/core/src/multiraft) ---

# A storage op the caller mirrors 1:1, in order, into its own namespace (pyagent.proto.storage
# semantics): Put, LogAppend (replaces entries at and after first_index; an empty log takes any
# index), LogTruncate, LogCompact. Keys all start with b"r/" and log names with "r/".
_RaftWrite = (
    tuple[Literal["put"], bytes, bytes]
    | tuple[Literal["append"], str, int, list[bytes]]
    | tuple[Literal["truncate"], str, int]
    | tuple[Literal["compact"], str, int]
)

class RaftFatalError(Exception):
    """raft-rs panicked inside the driver. The driver is poisoned: every later call raises this too."""

class NotLeaderError(Exception):
    """``propose``/``propose_conf_change``/``read_index``/``transfer_leader`` on a non-leader.

    ``leader_id`` is an attribute of the instance (not in ``args``): the leader this replica knows
    of, 0 when unknown. A proposal dropped while leadership is being transferred names the
    transferee.
    """

    leader_id: int

@final
class RaftReady:
    """One batch of every group's work, from ``MultiRaft.ready()``.

    Carry it out in this order: send ``send_now`` at once; persist ``writes`` as ONE atomic batch
    (with the data of ``snapshot_installed``); apply ``committed`` only after those writes are
    submitted to the same ordered store; once durable call ``on_persisted(token)`` and then send
    ``send_after_persist``. Stream each ``snapshots_out`` with the state captured at its index.
    """

    # 0 when ``writes`` is empty (then ``send_after_persist`` may go at once); else pass it to
    # ``on_persisted`` once ``writes`` are durable.
    @property
    def token(self) -> int: ...
    # Whether ``writes`` must be fsynced before ``on_persisted`` (new entries, a new term or vote, a
    # snapshot); when False, written is enough (etcd raft's MustSync).
    @property
    def must_sync(self) -> bool: ...
    @property
    def writes(self) -> list[_RaftWrite]: ...
    # (to node, frame): one frame per destination carrying every group's messages to it.
    @property
    def send_now(self) -> list[tuple[int, bytes]]: ...
    # (to node, frame): votes and follower replies; only after ``writes`` are durable.
    @property
    def send_after_persist(self) -> list[tuple[int, bytes]]: ...
    # (group, index, term, kind, data): kind 0 normal (data b"" for a new leader's no-op entry),
    # 1 a ConfChangeV2 to pass to ``apply_conf_change``. In index order per group.
    @property
    def committed(self) -> list[tuple[int, int, int, int, bytes]]: ...
    # (group, ctx, read index): serve the read once applied >= read index.
    @property
    def read_states(self) -> list[tuple[int, bytes, int]]: ...
    # (group, to node, raft MsgSnapshot bytes), taken out of the frames: send it with the state
    # captured at its index (see ``register_snapshot``); the receiver calls ``step_snapshot``; then
    # call ``report_snapshot``.
    @property
    def snapshots_out(self) -> list[tuple[int, int, bytes]]: ...
    # (group, index): a leader's snapshot was accepted: install its data at ``index`` atomically
    # with ``writes``; the applied index becomes ``index`` (no ``advance_apply`` needed).
    @property
    def snapshot_installed(self) -> list[tuple[int, int]]: ...
    # Groups that need a fresh ``register_snapshot`` (none registered, or too old, or taken
    # before the receiver joined the configuration).
    @property
    def needs_snapshot(self) -> list[int]: ...
    # Groups created by ``step`` because a leader or candidate addressed them.
    @property
    def created(self) -> list[int]: ...
    # (group, role, term, leader_id) for each group whose role or known leader changed.
    @property
    def roles(self) -> list[tuple[int, str, int, int]]: ...

@final
class MultiRaft:
    """Every raft group of one node (tikv raft-rs 0.7, pre-vote and check-quorum on).

    Group ids are ``0 <= id < group_id_max``. ``tick``, ``step``, ``ready`` and ``recover`` release
    the GIL. Misuse and bad frames raise ValueError (nothing changed); a raft-rs panic raises
    RaftFatalError and poisons the driver. Election timeouts come from ``seed`` (mixed with the
    group and node ids), so the same seed and inputs replay the same elections.
    """

    # A bootstrapped group starts from an empty snapshot at this index (its applied index).
    INIT_INDEX: ClassVar[int]

    def __new__(
        cls,
        node_id: int,
        seed: int,
        *,
        election_tick: int = 10,
        heartbeat_tick: int = 2,
        max_size_per_msg: int = 1048576,
        max_inflight_msgs: int = 256,
        group_id_max: int = 1048576,
    ) -> MultiRaft: ...
    # A new group starting from an empty snapshot at INIT_INDEX with these voters (call it on every
    # initial voter). Its initial state is in the writes of the next ready().
    def bootstrap_group(self, group_id: int, voters: list[int]) -> None: ...
    # An empty replica that waits for a leader's snapshot.
    def create_group(self, group_id: int) -> None: ...
    # Rebuild every group from what was persisted, on a driver without groups: ``kvs`` every
    # key/value under b"r/", ``logs`` log name -> (first_index, entries) for every log under "r/",
    # ``applied`` the durable applied index per group (missing: the group's snapshot index).
    # Every group with a log has keys b"r/<group>/...", so the logs to read are "r/<group>" for each
    # group seen in ``kvs``. Returns the recovered group ids. ValueError when the parts do not fit.
    def recover(
        self,
        kvs: list[tuple[bytes, bytes]],
        logs: dict[str, tuple[int, list[bytes]]],
        applied: dict[int, int],
    ) -> list[int]: ...
    def groups(self) -> list[int]: ...
    # One logical tick for every group that is not quiet. A leader whose group stayed settled (every
    # live replica caught up, everything committed and applied, nothing pending) for election_tick
    # ticks goes quiet and tells its replicas, which go quiet too: a quiet group sends nothing. A
    # proposal, read, conf change, leadership transfer or a peer's message wakes it.
    def tick(self) -> None: ...
    # Membership holds this node suspect, dead or gone: wake every group it is in (so followers
    # elect, and a leader cut off steps down); leaders may go quiet again without it.
    def peer_down(self, node: int) -> None: ...
    # The node is alive again: wake every group it is in, so that it is brought up to date.
    def peer_up(self, node: int) -> None: ...
    # A frame from a peer: decoded and checked whole first (ValueError, nothing stepped), then each
    # message is stepped. A message for an unknown group creates it (see RaftReady.created) when a
    # leader or candidate sent it (append, heartbeat, snapshot, (pre)vote request); else it is dropped.
    def step(self, from_node: int, frame: bytes) -> None: ...
    # A MsgSnapshot that arrived by bulk transfer (from RaftReady.snapshots_out on the sender).
    # ``index`` is the index of the state that came with it: a snapshot naming another index is a
    # ValueError (nothing stepped). A MsgSnapshot inside a ``step`` frame is a ValueError too.
    def step_snapshot(self, from_node: int, group_id: int, message: bytes, index: int) -> None: ...
    # Returns the log index the entry gets. NotLeaderError; ValueError for an unknown group or data
    # above 16 MiB.
    def propose(self, group_id: int, data: bytes) -> int: ...
    # ("add_voter" | "add_learner" | "remove", node_id) as one ConfChangeV2; several changes go
    # through a joint configuration that is left automatically; [] leaves one explicitly.
    # ValueError while an earlier conf change is not yet applied (retry later).
    def propose_conf_change(self, group_id: int, changes: list[tuple[str, int]]) -> None: ...
    # The answer comes in a later RaftReady.read_states, or never (leadership lost, or no entry
    # committed in this leader's term yet): time it out and make every ctx unique. The ctx
    # b"pyagent/quiesce" is the driver's own marker: ValueError.
    def read_index(self, group_id: int, ctx: bytes) -> None: ...
    def transfer_leader(self, group_id: int, to: int) -> None: ...
    def has_ready(self) -> bool: ...
    # Steps every group that has work, in group-id order, into ONE batch.
    def ready(self) -> RaftReady: ...
    # The writes of the ready with this token, and of every earlier ready, are durable.
    def on_persisted(self, token: int) -> None: ...
    # Apply a committed conf change entry (kind 1), in log order; persist the returned writes
    # atomically with the applied index of that entry.
    def apply_conf_change(self, group_id: int, data: bytes) -> list[_RaftWrite]: ...
    # The caller applied every committed entry up to ``applied``.
    def advance_apply(self, group_id: int, applied: int) -> None: ...
    # The caller captured its state machine at ``applied`` (at most what it was handed); raft-rs
    # may now send snapshots {index: applied, conf state as of applied}.
    def register_snapshot(self, group_id: int, applied: int) -> None: ...
    # Drop the log below ``to_index`` (<= the applied index); returns the writes.
    def compact(self, group_id: int, to_index: int) -> list[_RaftWrite]: ...
    def report_snapshot(self, group_id: int, to: int, ok: bool) -> None: ...
    def report_unreachable(self, group_id: int, to: int) -> None: ...
    # role ("leader" | "follower" | "candidate" | "pre_candidate"), term, leader_id, commit, applied,
    # first_index, last_index, voters, voters_outgoing (non-empty in a joint config), learners, quiet
    # (the group is idle and not ticked), and for a leader progress {node_id: matched index}.
    def status(self, group_id: int) -> dict[str, object]: ...

# LoRA delta codecs (docs/lora.md, "Codecs"). Arrays go in through the buffer protocol: C-contiguous
# float32 (a numpy array), read in place with the GIL released; do not write them meanwhile.

class LoraFrameError(ValueError):
    """A LoRA frame's bytes are malformed (a peer's fault when the frame came from one)."""

@final
class LoraCodec:
    """Value format ("fp16", "int8", "int4", "int2"), values per scale, and top-k: ``k_per_chunk``
    of every ``chunk_size`` values kept (both 0: dense). ValueError for a combination out of range."""

    def __new__(
        cls, codec: str, block_size: int = 64, chunk_size: int = 0, k_per_chunk: int = 0
    ) -> LoraCodec: ...
    @property
    def codec(self) -> str: ...
    @property
    def block_size(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def k_per_chunk(self) -> int: ...
    def frame_len_max(self, numel: int, ndim: int = 1) -> int: ...
    # One frame of the array (its shape travels too); ``seed`` turns on stochastic rounding.
    def encode(self, values: _Floats, seed: int | None = None) -> bytes: ...
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

@final
class LoraErrorFeedback:
    """The residual toward one destination: ``encode`` sends ``delta`` plus what earlier frames did
    not carry, and keeps what this frame does not."""

    def __new__(cls, shape: tuple[int, ...]) -> LoraErrorFeedback: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    def encode(self, codec: LoraCodec, delta: _Floats, seed: int | None = None) -> bytes: ...
    def residual_into(self, out: _Floats) -> None: ...
    def reset(self) -> None: ...

# The frame's codec and shape after checking its header and length (not its hash, which
# ``lora_decode_into`` checks); LoraFrameError if malformed or holding more than ``numel_max`` values.
def lora_frame_info(frame_bytes: bytes, numel_max: int) -> tuple[LoraCodec, tuple[int, ...]]: ...

# Decode into ``out`` (writable float32, exactly the frame's number of values). On LoraFrameError ``out``
# may have been written all the same (a dense FP16 frame's hash is checked as it is decoded): discard it.
def lora_decode_into(frame_bytes: bytes, out: _Floats) -> LoraCodec: ...

# The most precise codec of a fixed ladder whose frame moves within the budget; else the smallest.
def lora_choose_codec(bandwidth_bytes_per_s: float, numel: int, round_budget_s: float) -> LoraCodec: ...
