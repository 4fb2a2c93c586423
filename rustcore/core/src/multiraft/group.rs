//! One replica: a raft-rs `RawNode` whose election timeouts come from the driver's seed, whether
//! it is quiet (see `quiesce`), and the translation of its `Ready` into the driver's batch.

use std::collections::BTreeSet;

use raft::eraftpb::{EntryType, Message, MessageType};
use raft::{RawNode, StateRole};

use super::quiesce;
use super::rng::SplitMix64;
use super::storage::GroupStorage;
use super::{Committed, EntryKind, Role, RoleChange, Write};

pub struct Group {
    raw: RawNode<GroupStorage>,
    rng: SplitMix64,
    election_tick: usize,
    /// The election timeout this driver last chose.
    timeout: usize,
    /// Writes made outside a ready (a bootstrap's initial state), emitted by the next ready.
    pub pending_writes: Vec<Write>,
    /// The last index handed to the caller, as a committed entry or an installed snapshot.
    pub delivered: u64,
    /// raft-rs asked for a snapshot that was not registered (or too old).
    pub snapshot_wanted: bool,
    /// Not ticked: the group is idle (see `quiesce`).
    quiet: bool,
    /// Consecutive ticks this leader's group has been settled.
    settled_ticks: usize,
    /// Messages of the driver's own (quiesce heartbeats), sent after raft-rs's in the next ready.
    pub outbox: Vec<Message>,
}

/// The parts of a group's ready that the driver merges into its batch.
#[derive(Default)]
pub struct Batch {
    pub writes: Vec<Write>,
    pub committed: Vec<Committed>,
    pub read_states: Vec<(u64, Vec<u8>, u64)>,
    pub snapshot_installed: Vec<(u64, u64)>,
    pub roles: Vec<RoleChange>,
    /// Messages that may leave at once (a leader's), and those that wait for the writes.
    pub send_now: Vec<(u64, Message)>,
    pub send_after_persist: Vec<(u64, Message)>,
    /// Whether the writes must be fsynced before `on_persisted` (etcd raft's `MustSync`): new entries,
    /// a new term or vote, or a snapshot. A commit index alone may be lost and learned again.
    pub must_sync: bool,
}

/// What `on_persisted` must tell this group's raft once the batch is durable.
pub struct Collected {
    pub number: u64,
    pub snapshot_index: Option<u64>,
}

pub fn role_of(state: StateRole) -> Role {
    match state {
        StateRole::Follower => Role::Follower,
        StateRole::Candidate => Role::Candidate,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Leader => Role::Leader,
    }
}

impl Group {
    pub fn new(raw: RawNode<GroupStorage>, rng: SplitMix64, election_tick: usize) -> Self {
        let mut group = Self {
            raw,
            rng,
            election_tick,
            timeout: 0,
            pending_writes: Vec::new(),
            delivered: 0,
            snapshot_wanted: false,
            quiet: false,
            settled_ticks: 0,
            outbox: Vec::new(),
        };
        group.delivered = group.raw.raft.raft_log.applied;
        group.retime();
        group
    }

    pub fn raw(&self) -> &RawNode<GroupStorage> {
        &self.raw
    }

    pub fn storage_mut(&mut self) -> &mut GroupStorage {
        self.raw.mut_store()
    }

    fn retime(&mut self) {
        self.timeout = self.rng.below(self.election_tick, 2 * self.election_tick);
        self.raw.raft.set_randomized_election_timeout(self.timeout);
    }

    /// Run `f` on the raw node, then replace the election timeout raft-rs drew from
    /// `thread_rng` (it does on every `reset`, i.e. on every term or role change) by one of ours.
    /// A reset is recognized by the term or role changing, or the timeout no longer being ours.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut RawNode<GroupStorage>) -> R) -> R {
        let before = (self.raw.raft.term, self.raw.raft.state);
        let result = f(&mut self.raw);
        let after = (self.raw.raft.term, self.raw.raft.state);
        if before != after || self.raw.raft.randomized_election_timeout() != self.timeout {
            self.retime();
        }
        if self.raw.store().take_snapshot_wanted() {
            self.snapshot_wanted = true;
        }
        result
    }

    pub fn needs_ready(&self) -> bool {
        !self.pending_writes.is_empty()
            || self.snapshot_wanted
            || !self.outbox.is_empty()
            || self.raw.has_ready()
    }

    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Whether `node` is a voter or learner of this group.
    pub fn has_member(&self, node: u64) -> bool {
        self.raw.raft.prs().iter().any(|(&id, _)| id == node)
    }

    /// One logical tick, unless the group is quiet. A leader whose group stayed settled for an
    /// election timeout's worth of ticks goes quiet and tells its replicas.
    pub fn tick(&mut self, down: &BTreeSet<u64>) {
        if self.quiet {
            return;
        }
        self.with(|raw| raw.tick());
        if !quiesce::is_settled(&self.raw.raft, down) {
            self.settled_ticks = 0;
            return;
        }
        self.settled_ticks += 1;
        if self.settled_ticks >= self.election_tick {
            let raft = &self.raw.raft;
            let replicas = raft
                .prs()
                .iter()
                .map(|(&id, _)| id)
                .filter(|&id| id != raft.id);
            let heartbeats: Vec<Message> = replicas
                .map(|to| quiesce::quiesce_heartbeat(raft, to))
                .collect();
            self.outbox.extend(heartbeats);
            self.quiet = true;
        }
    }

    /// Someone has work for this group, or news of a replica: it ticks again.
    pub fn wake(&mut self) {
        self.settled_ticks = 0;
        if std::mem::take(&mut self.quiet) {
            quiesce::forget_activity(&mut self.raw.raft);
        }
    }

    /// Step a peer's message. A quiesce heartbeat that fits quiets a follower (one that does not is
    /// stepped as an ordinary heartbeat); any other message wakes a quiet group, except a reply in this term that leaves a quiet leader settled (the
    /// answers to its last heartbeats arrive after it went quiet). An awake group's settled ticks
    /// go on counting: its leader judges each tick whether the group is still settled.
    pub fn step(&mut self, mut message: Message, down: &BTreeSet<u64>) {
        if quiesce::is_quiesce_heartbeat(&message) {
            if self.with(|raw| quiesce::accept_quiesce(&mut raw.raft, &message)) {
                self.quiet = true;
                return;
            }
            // Not for this replica's log: an ordinary heartbeat, answered.
            message.context = Default::default();
        }
        let reply_in_term = message.term == self.raw.raft.term
            && matches!(
                message.get_msg_type(),
                MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse
            );
        if self.quiet && !reply_in_term {
            self.wake();
        }
        // raft-rs refuses a response from a peer it does not track; that is a lost message.
        let _ = self.with(|raw| raw.step(message));
        if self.quiet && (self.raw.has_ready() || !quiesce::is_settled(&self.raw.raft, down)) {
            self.wake();
        }
    }

    /// Take this group's ready into `batch`, update the in-memory storage to match, and
    /// advance raft-rs without waiting for the writes (they are acknowledged by number later).
    pub fn collect(&mut self, group_id: u64, batch: &mut Batch) -> Collected {
        batch.must_sync |= !self.pending_writes.is_empty();
        batch.writes.append(&mut self.pending_writes);
        let mut rd = self.with(|raw| raw.ready());
        if let Some(ss) = rd.ss() {
            batch.roles.push(RoleChange {
                group_id,
                role: role_of(ss.raft_state),
                term: self.raw.raft.term,
                leader_id: ss.leader_id,
            });
        }
        let mut snapshot_index = None;
        if !rd.snapshot().is_empty() {
            let meta = rd.snapshot().get_metadata().clone();
            self.raw
                .mut_store()
                .install_snapshot(&meta, &mut batch.writes);
            batch.snapshot_installed.push((group_id, meta.index));
            batch.must_sync = true;
            self.delivered = meta.index;
            snapshot_index = Some(meta.index);
        }
        batch.must_sync |= !rd.entries().is_empty();
        self.raw.mut_store().append(rd.entries(), &mut batch.writes);
        // The commit index goes into the same batch as the entries it commits, so it is durable
        // no later than anything the caller applies from this ready.
        if let Some(hs) = rd.hs() {
            let before = self.raw.store().hard_state();
            batch.must_sync |= hs.term != before.term || hs.vote != before.vote;
            self.raw
                .mut_store()
                .set_hard_state(hs.clone(), &mut batch.writes);
        }
        for state in rd.take_read_states() {
            batch
                .read_states
                .push((group_id, state.request_ctx, state.index));
        }
        for entry in rd.take_committed_entries() {
            let kind = match entry.get_entry_type() {
                EntryType::EntryNormal => EntryKind::Normal,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => EntryKind::ConfChange,
            };
            self.delivered = entry.index;
            batch.committed.push(Committed {
                group_id,
                index: entry.index,
                term: entry.term,
                kind,
                data: entry.data.to_vec(),
            });
        }
        let tag = |message| (group_id, message);
        batch
            .send_now
            .extend(rd.take_messages().into_iter().map(tag));
        batch
            .send_after_persist
            .extend(rd.take_persisted_messages().into_iter().map(tag));
        let number = rd.number();
        self.with(|raw| raw.advance_append_async(rd));
        Collected {
            number,
            snapshot_index,
        }
    }
}
