//! A sans-I/O multi-Raft driver on tikv's raft-rs: many groups on one node, driven by one loop.
//!
//! The caller feeds ticks, frames from peers and local requests into a [`Driver`], and takes
//! [`Ready`] batches out. One `ready()` collects every group's work into one write batch (one
//! fsync for all groups) and one frame per destination node (many groups share a peer). The
//! caller persists `writes`, reports them with `on_persisted(token)`, and only then sends
//! `send_after_persist`; `send_now` (a leader's appends) leaves at once, so replication overlaps
//! the leader's own fsync.
//!
//! Modules: [`frame`] is the wire format; `storage` keeps each group's persisted state in memory
//! for raft-rs and produces the writes; `group` wraps one `RawNode`; `driver` runs them all;
//! `quiesce` decides when an idle group stops ticking and what wakes it; `panics` turns a raft-rs
//! panic into one fatal error; `recover` rebuilds groups from what was persisted; `keys` names what
//! is persisted.

mod driver;
pub mod frame;
mod group;
mod keys;
mod panics;
mod quiesce;
mod recover;
pub(crate) mod rng;
mod storage;

#[cfg(test)]
mod tests;

use std::fmt;

pub use driver::{Config, Driver};
pub use keys::{KEY_PREFIX, LOG_PREFIX};

/// Index (and term) of the snapshot a bootstrapped group starts from, as TiKV does: entries
/// below it never exist, so a replica added later must start from a snapshot.
pub const INIT_INDEX: u64 = 5;
/// A proposal larger than this is refused, so one entry always fits in a message.
pub const PROPOSAL_BYTES_MAX: usize = 16 << 20;
/// `max_size_per_msg` above this is refused, for the same reason.
pub const MSG_SIZE_BYTES_MAX: u64 = 8 << 20;
/// Ops in one ready's writes stay below the store's per-batch limit; groups that do not fit
/// wait for the next ready.
pub const WRITES_MAX: usize = 65_536;
/// Bytes of committed entries handed out per group per ready; the rest follow in later readies.
pub const COMMITTED_BYTES_PER_READY_MAX: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// raft-rs panicked inside the driver; the driver refuses every later call.
    Fatal(String),
    /// The replica is not the leader; `leader_id` is the one it knows of, 0 when none.
    NotLeader { leader_id: u64 },
    /// The caller's mistake or a peer's bad bytes; nothing was changed.
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Fatal(reason) => write!(f, "raft driver failed: {reason}"),
            Error::NotLeader { leader_id: 0 } => write!(f, "not leader; leader unknown"),
            Error::NotLeader { leader_id } => write!(f, "not leader; leader is {leader_id}"),
            Error::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid<T>(reason: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(reason.into()))
}

/// One op the caller mirrors into its storage namespace, in order (semantics of
/// `pyagent.proto.storage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Replaces entries at and after `first_index`; an empty log accepts any index.
    Append {
        log: String,
        first_index: u64,
        entries: Vec<Vec<u8>>,
    },
    Truncate {
        log: String,
        from_index: u64,
    },
    Compact {
        log: String,
        to_index: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Normal,
    /// A `ConfChangeV2`: pass its data to `apply_conf_change`.
    ConfChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub group_id: u64,
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    /// Empty for the no-op entry a new leader appends.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre_candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub group_id: u64,
    pub role: Role,
    pub term: u64,
    pub leader_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeKind {
    AddVoter,
    AddLearner,
    Remove,
}

/// One batch of work from every group that had some. See the module doc for the order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ready {
    /// 0 when `writes` is empty; else pass to `on_persisted` once the writes are durable.
    pub token: u64,
    pub writes: Vec<Write>,
    /// The writes must be fsynced before `on_persisted`; when false they need only be written (a
    /// commit index, a compaction, a conf state as of an applied entry: all recoverable).
    pub must_sync: bool,
    /// `(to node, frame)`: safe to send at once.
    pub send_now: Vec<(u64, Vec<u8>)>,
    /// `(to node, frame)`: send only after `writes` are durable (at once when `token` is 0).
    pub send_after_persist: Vec<(u64, Vec<u8>)>,
    /// In index order within each group.
    pub committed: Vec<Committed>,
    /// `(group, ctx, read index)`.
    pub read_states: Vec<(u64, Vec<u8>, u64)>,
    /// `(group, to node, MsgSnapshot bytes)`, taken out of the frames for bulk transfer.
    pub snapshots_out: Vec<(u64, u64, Vec<u8>)>,
    /// `(group, index)`: install the snapshot data at this index with these writes.
    pub snapshot_installed: Vec<(u64, u64)>,
    pub needs_snapshot: Vec<u64>,
    pub created: Vec<u64>,
    pub roles: Vec<RoleChange>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        *self == Ready::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub role: Role,
    pub term: u64,
    pub leader_id: u64,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    /// Voters of the outgoing half while in a joint configuration, else empty.
    pub voters_outgoing: Vec<u64>,
    pub learners: Vec<u64>,
    /// For a leader: `(node, matched index)` per peer, in node order.
    pub progress: Option<Vec<(u64, u64)>>,
    /// The group is idle and not ticked (see `quiesce`).
    pub quiet: bool,
}
