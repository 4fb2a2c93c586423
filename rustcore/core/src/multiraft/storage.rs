//! One group's persisted raft state, held in memory for raft-rs, and the writes that mirror
//! every change of it into the caller's store.
//!
//! raft-rs reads entries back through [`raft::Storage`] (to send appends, to hand out committed
//! entries), and it may do so before the caller's fsync finishes, so this copy is updated when a
//! ready is collected, not when it is durable. The caller's store receives the same changes
//! as [`Write`]s, in the same order, so after a crash it holds a prefix of them.

use std::cell::Cell;
use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::keys::{self, KeyKind};
use super::Write;

pub struct GroupStorage {
    group_id: u64,
    hard_state: HardState,
    /// The configuration as of the caller's applied index: what a restart starts from, and what a
    /// snapshot of the caller's state carries.
    conf_state: ConfState,
    /// Index and term of the entry just below `entries` (the last one a snapshot covers).
    truncated: (u64, u64),
    /// `entries[i]` has index `truncated.0 + 1 + i`.
    entries: VecDeque<Entry>,
    /// What the caller last captured of its state machine, see [`Self::register_snapshot`].
    registered: Option<SnapshotMetadata>,
    /// Set when raft-rs asked for a snapshot and none fit; the driver reports it to the caller.
    /// A `Cell` because `Storage::snapshot` takes `&self`.
    snapshot_wanted: Cell<bool>,
}

impl GroupStorage {
    /// An uninitialized replica: no configuration, empty log, waiting for a leader's snapshot.
    pub fn empty(group_id: u64) -> Self {
        Self::restored(
            group_id,
            HardState::default(),
            ConfState::default(),
            (0, 0),
            Vec::new(),
        )
    }

    /// A replica from persisted parts; `entries` must start right after `truncated`.
    pub fn restored(
        group_id: u64,
        hard_state: HardState,
        conf_state: ConfState,
        truncated: (u64, u64),
        entries: Vec<Entry>,
    ) -> Self {
        debug_assert!(entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == truncated.0 + 1 + i as u64));
        Self {
            group_id,
            hard_state,
            conf_state,
            truncated,
            entries: entries.into(),
            registered: None,
            snapshot_wanted: Cell::new(false),
        }
    }

    /// Every key a fresh group needs, for the first ready after it is created from scratch.
    pub fn initial_writes(&self) -> Vec<Write> {
        vec![
            self.truncated_write(),
            self.conf_state_write(),
            self.hard_state_write(),
        ]
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    pub fn last_index(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.truncated.0 {
            return Some(self.truncated.1);
        }
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(offset as usize).map(|e| e.term)
    }

    fn hard_state_write(&self) -> Write {
        Write::Put {
            key: keys::key(self.group_id, KeyKind::HardState),
            value: self.hard_state.write_to_bytes().expect("encodes"),
        }
    }

    fn conf_state_write(&self) -> Write {
        Write::Put {
            key: keys::key(self.group_id, KeyKind::ConfState),
            value: self.conf_state.write_to_bytes().expect("encodes"),
        }
    }

    fn truncated_write(&self) -> Write {
        Write::Put {
            key: keys::key(self.group_id, KeyKind::Truncated),
            value: keys::encode_truncated(self.truncated.0, self.truncated.1),
        }
    }

    pub fn set_hard_state(&mut self, hard_state: HardState, writes: &mut Vec<Write>) {
        self.hard_state = hard_state;
        writes.push(self.hard_state_write());
    }

    /// Append entries from a ready; they replace any entries at or after their first index.
    pub fn append(&mut self, entries: &[Entry], writes: &mut Vec<Write>) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index >= self.first_index() && first.index <= self.last_index() + 1,
            "append at {} to a log holding {}..={}",
            first.index,
            self.first_index(),
            self.last_index()
        );
        self.entries
            .truncate((first.index - self.first_index()) as usize);
        self.entries.extend(entries.iter().cloned());
        writes.push(Write::Append {
            log: keys::log_name(self.group_id),
            first_index: first.index,
            entries: entries
                .iter()
                .map(|e| e.write_to_bytes().expect("encodes"))
                .collect(),
        });
    }

    /// Replace the whole log by a snapshot received from the leader.
    pub fn install_snapshot(&mut self, meta: &SnapshotMetadata, writes: &mut Vec<Write>) {
        self.truncated = (meta.index, meta.term);
        self.entries.clear();
        self.conf_state = meta.get_conf_state().clone();
        if self
            .registered
            .as_ref()
            .is_some_and(|r| r.index < meta.index)
        {
            self.registered = None;
        }
        // Truncating from 1 empties the log, so the next append may start at `index + 1`.
        writes.push(Write::Truncate {
            log: keys::log_name(self.group_id),
            from_index: 1,
        });
        writes.push(self.truncated_write());
        writes.push(self.conf_state_write());
    }

    /// The configuration after the caller applied a conf change entry.
    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Vec<Write> {
        self.conf_state = conf_state;
        vec![self.conf_state_write()]
    }

    /// Drop the log below `to_index`; the caller checked `to_index <= applied`.
    pub fn compact(&mut self, to_index: u64) -> Result<Vec<Write>, String> {
        if to_index <= self.first_index() {
            return Ok(Vec::new());
        }
        if to_index > self.last_index() + 1 {
            return Err(format!(
                "compact to {to_index} past the last entry {}",
                self.last_index()
            ));
        }
        let term = self.term_of(to_index - 1).expect("within the log");
        self.entries
            .drain(..(to_index - self.first_index()) as usize);
        self.truncated = (to_index - 1, term);
        if self
            .registered
            .as_ref()
            .is_some_and(|r| r.index < self.truncated.0)
        {
            self.registered = None;
        }
        Ok(vec![
            self.truncated_write(),
            Write::Compact {
                log: keys::log_name(self.group_id),
                to_index,
            },
        ])
    }

    /// The caller captured its state machine at `applied`: raft-rs may now send a snapshot
    /// with this metadata. The configuration is the one of the last applied conf change.
    pub fn register_snapshot(&mut self, applied: u64) -> Result<(), String> {
        let term = self
            .term_of(applied)
            .ok_or_else(|| format!("index {applied} is not in the log"))?;
        self.registered = Some(SnapshotMetadata {
            index: applied,
            term,
            conf_state: Some(self.conf_state.clone()).into(),
            ..Default::default()
        });
        Ok(())
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let start = (low - self.first_index()) as usize;
        let end = (high - self.first_index()) as usize;
        let mut entries: Vec<Entry> = self.entries.range(start..end).cloned().collect();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(GroupStorage::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(GroupStorage::last_index(self))
    }

    /// The registered snapshot if it fits; otherwise ask the caller for a new one. One older
    /// than the log's start would leave the receiver with a gap it cannot fill, and one whose
    /// configuration lacks the receiver is refused by it (taken before the receiver was added).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let fits = |meta: &SnapshotMetadata| {
            let cs = meta.get_conf_state();
            let names_receiver = cs
                .voters
                .iter()
                .chain(&cs.learners)
                .chain(&cs.voters_outgoing)
                .any(|&id| id == to);
            meta.index >= request_index && meta.index >= self.truncated.0 && names_receiver
        };
        match &self.registered {
            Some(meta) if fits(meta) => {
                let mut snapshot = Snapshot::default();
                snapshot.set_metadata(meta.clone());
                Ok(snapshot)
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}
