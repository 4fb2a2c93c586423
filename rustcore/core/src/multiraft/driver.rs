//! The driver: every group of this node, one batch per `ready()`, and the bookkeeping that
//! ties a batch's durability back to each group's raft-rs ready number.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, HardState, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::frame::{self, FrameBuilder, MESSAGE_BYTES_MAX};
use super::group::{role_of, Batch, Group};
use super::panics;
use super::quiesce::QUIESCE_CONTEXT;
use super::recover;
use super::rng::SplitMix64;
use super::storage::GroupStorage;
use super::{
    invalid, ConfChangeKind, Error, GroupStatus, Ready, Result, Write,
    COMMITTED_BYTES_PER_READY_MAX, INIT_INDEX, MSG_SIZE_BYTES_MAX, PROPOSAL_BYTES_MAX, WRITES_MAX,
};

/// The most ops one group adds to a batch: a bootstrap's 3 keys, a snapshot install's 3 ops,
/// one append, one hard state.
const WRITES_PER_GROUP_MAX: usize = 8;
/// A `ConfChangeV2` larger than this is not one the driver proposed.
const CONF_CHANGE_BYTES_MAX: usize = 1 << 20;
/// The most voters and learners a bootstrap or one conf change may name.
const MEMBERS_MAX: usize = 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: u64,
    pub seed: u64,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Group ids are `0 <= id < group_id_max`.
    pub group_id_max: u64,
}

impl Config {
    pub fn new(node_id: u64, seed: u64) -> Self {
        Self {
            node_id,
            seed,
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            group_id_max: 1 << 20,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.node_id == 0 {
            return invalid("node_id must not be 0");
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return invalid("need 0 < heartbeat_tick < election_tick");
        }
        if self.election_tick > 1 << 20 {
            return invalid("election_tick too large");
        }
        if self.max_size_per_msg > MSG_SIZE_BYTES_MAX {
            return invalid(format!("max_size_per_msg above {MSG_SIZE_BYTES_MAX}"));
        }
        if self.max_inflight_msgs == 0 {
            return invalid("max_inflight_msgs must be positive");
        }
        if self.group_id_max == 0 || self.group_id_max > 1 << 62 {
            return invalid("group_id_max must be in 1..=2**62");
        }
        Ok(())
    }
}

/// One batch handed out by `ready()` whose writes are not yet reported durable.
struct InFlight {
    token: u64,
    /// `(group, raft ready number, snapshot index if it installed one)`.
    readies: Vec<(u64, u64, Option<u64>)>,
    /// Messages of later batches without writes that must still wait for this one.
    held: Vec<(u64, Message)>,
}

pub struct Driver {
    config: Config,
    logger: slog::Logger,
    groups: BTreeMap<u64, Group>,
    /// Why the driver failed, once raft-rs panicked.
    poisoned: Option<String>,
    last_token: u64,
    in_flight: VecDeque<InFlight>,
    /// Held messages whose batch became durable; the next ready sends them at once.
    released: Vec<(u64, Message)>,
    created: Vec<u64>,
    /// Nodes the caller's membership holds down: a leader may go quiet without them.
    down: BTreeSet<u64>,
    /// The group the current call is working on, so that a panic's reason names it.
    touching: Option<u64>,
}

/// Messages a peer may send us. Proposals, read-index and transfer requests are never
/// forwarded (those calls refuse on a follower), and local messages never travel.
fn is_remote(msg_type: MessageType) -> bool {
    use MessageType::*;
    matches!(
        msg_type,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgSnapshot
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTimeoutNow
    )
}

/// Messages a leader or candidate sends to a replica that may not exist yet.
fn creates_replica(msg_type: MessageType) -> bool {
    use MessageType::*;
    matches!(
        msg_type,
        MsgAppend | MsgHeartbeat | MsgSnapshot | MsgRequestVote | MsgRequestPreVote
    )
}

impl Driver {
    pub fn new(config: Config) -> Result<Self> {
        config.validate()?;
        // The driver reports the panics it catches itself (`guard`), as one line.
        panics::silence_caught_panics();
        Ok(Self {
            config,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            groups: BTreeMap::new(),
            poisoned: None,
            last_token: 0,
            in_flight: VecDeque::new(),
            released: Vec::new(),
            created: Vec::new(),
            down: BTreeSet::new(),
            touching: None,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Run `f` unless poisoned; a panic inside (raft-rs's `fatal!`, a broken invariant)
    /// poisons the driver, since raft-rs's state may be half-updated.
    fn guard<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::Fatal(reason.clone()));
        }
        self.touching = None;
        match panics::catch(|| f(self)) {
            Ok(result) => result,
            Err(panic) => {
                let reason = match self.touching {
                    Some(group_id) => format!("group {group_id}: {panic}"),
                    None => panic,
                };
                self.poisoned = Some(reason.clone());
                Err(Error::Fatal(reason))
            }
        }
    }

    fn check_group_id(&self, group_id: u64) -> Result<()> {
        if group_id >= self.config.group_id_max {
            return invalid(format!(
                "group id {group_id} (max {})",
                self.config.group_id_max - 1
            ));
        }
        Ok(())
    }

    fn group(&mut self, group_id: u64) -> Result<&mut Group> {
        self.touching = Some(group_id);
        self.groups
            .get_mut(&group_id)
            .ok_or_else(|| Error::Invalid(format!("no raft group {group_id}")))
    }

    /// The group of which this node is the leader, woken: the caller is about to give it work.
    fn wake_leader(&mut self, group_id: u64) -> Result<&mut Group> {
        let group = self.group(group_id)?;
        let raft = &group.raw().raft;
        if raft.state != StateRole::Leader {
            return Err(Error::NotLeader {
                leader_id: raft.leader_id,
            });
        }
        group.wake();
        Ok(group)
    }

    fn insert_group(&mut self, group_id: u64, storage: GroupStorage, applied: u64) -> Result<()> {
        let raft_config = raft::Config {
            id: self.config.node_id,
            election_tick: self.config.election_tick,
            heartbeat_tick: self.config.heartbeat_tick,
            applied,
            max_size_per_msg: self.config.max_size_per_msg,
            max_inflight_msgs: self.config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            max_committed_size_per_ready: COMMITTED_BYTES_PER_READY_MAX,
            ..Default::default()
        };
        let raw = RawNode::new(&raft_config, storage, &self.logger)
            .map_err(|error| Error::Invalid(format!("group {group_id}: {error}")))?;
        let rng = SplitMix64::for_replica(self.config.seed, group_id, self.config.node_id);
        self.groups
            .insert(group_id, Group::new(raw, rng, self.config.election_tick));
        Ok(())
    }

    fn check_new_group(&self, group_id: u64) -> Result<()> {
        self.check_group_id(group_id)?;
        if self.groups.contains_key(&group_id) {
            return invalid(format!("raft group {group_id} exists"));
        }
        Ok(())
    }

    /// A new group that starts from an empty snapshot at [`INIT_INDEX`] with these voters.
    pub fn bootstrap_group(&mut self, group_id: u64, voters: &[u64]) -> Result<()> {
        self.guard(|d| {
            d.check_new_group(group_id)?;
            let unique: BTreeSet<u64> = voters.iter().copied().collect();
            if voters.is_empty() || voters.len() > MEMBERS_MAX || unique.contains(&0) {
                return invalid(format!("voters must be 1 to {MEMBERS_MAX} non-zero ids"));
            }
            if unique.len() != voters.len() {
                return invalid("duplicate voters");
            }
            let conf_state = ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            };
            let hard_state = HardState {
                term: INIT_INDEX,
                commit: INIT_INDEX,
                ..Default::default()
            };
            let storage = GroupStorage::restored(
                group_id,
                hard_state,
                conf_state,
                (INIT_INDEX, INIT_INDEX),
                Vec::new(),
            );
            let writes = storage.initial_writes();
            d.insert_group(group_id, storage, INIT_INDEX)?;
            d.group(group_id)?.pending_writes = writes;
            Ok(())
        })
    }

    /// An empty replica that waits for a leader's snapshot.
    pub fn create_group(&mut self, group_id: u64) -> Result<()> {
        self.guard(|d| {
            d.check_new_group(group_id)?;
            d.insert_group(group_id, GroupStorage::empty(group_id), 0)
        })
    }

    /// Rebuild every group from what was persisted; only on a driver without groups.
    pub fn recover(
        &mut self,
        kvs: &[(Vec<u8>, Vec<u8>)],
        logs: &BTreeMap<String, (u64, Vec<Vec<u8>>)>,
        applied: &BTreeMap<u64, u64>,
    ) -> Result<Vec<u64>> {
        self.guard(|d| {
            if !d.groups.is_empty() {
                return invalid("recover needs a driver without groups");
            }
            let parsed = recover::parse(kvs, logs, d.config.group_id_max)?;
            // Check every group before creating any, so a refusal leaves the driver empty.
            let mut applied_of = BTreeMap::new();
            for (&group_id, group) in &parsed {
                let truncated = group.truncated.0;
                let applied = applied.get(&group_id).copied().unwrap_or(truncated);
                if applied < truncated || applied > group.hard_state.commit {
                    return invalid(format!(
                        "group {group_id}: applied {applied} outside {truncated}..={}",
                        group.hard_state.commit
                    ));
                }
                applied_of.insert(group_id, applied);
            }
            for (group_id, group) in parsed {
                let storage = GroupStorage::restored(
                    group_id,
                    group.hard_state,
                    group.conf_state,
                    group.truncated,
                    group.entries,
                );
                if let Err(error) = d.insert_group(group_id, storage, applied_of[&group_id]) {
                    d.groups.clear();
                    return Err(error);
                }
            }
            Ok(d.groups.keys().copied().collect())
        })
    }

    pub fn groups(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// One logical tick for every group that is not quiet.
    pub fn tick(&mut self) -> Result<()> {
        self.guard(|d| {
            for (&group_id, group) in &mut d.groups {
                d.touching = Some(group_id);
                group.tick(&d.down);
            }
            Ok(())
        })
    }

    /// The caller's membership holds `node` suspect, dead or gone: wake every group it is in, so
    /// that followers whose leader it was elect another, and a leader cut off with it steps down.
    /// Leaders may go quiet again without it.
    pub fn peer_down(&mut self, node: u64) -> Result<()> {
        self.guard(|d| {
            d.down.insert(node);
            d.wake_groups_of(node);
            Ok(())
        })
    }

    /// `node` is alive again: wake every group it is in, so its leaders bring it up to date.
    pub fn peer_up(&mut self, node: u64) -> Result<()> {
        self.guard(|d| {
            d.down.remove(&node);
            d.wake_groups_of(node);
            Ok(())
        })
    }

    fn wake_groups_of(&mut self, node: u64) {
        for group in self.groups.values_mut() {
            if group.has_member(node) {
                group.wake();
            }
        }
    }

    /// A frame from `from_node`: decoded and checked whole before any message is stepped.
    pub fn step(&mut self, from_node: u64, frame: &[u8]) -> Result<()> {
        self.guard(|d| {
            let messages = frame::decode(frame, d.config.group_id_max)
                .map_err(|error| Error::Invalid(error.to_string()))?;
            for (_, message) in &messages {
                d.check_message(from_node, message)?;
                // A snapshot comes only by bulk transfer, with its data (`step_snapshot`).
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    return invalid("a snapshot inside a frame (snapshots come by transfer)");
                }
            }
            for (group_id, message) in messages {
                d.step_one(group_id, message)?;
            }
            Ok(())
        })
    }

    /// A `MsgSnapshot` that came by bulk transfer rather than in a frame.
    /// `index` is the index of the state the caller received with it: a snapshot whose metadata names
    /// another index is refused before raft-rs sees it, so a replica never installs data from elsewhere.
    pub fn step_snapshot(
        &mut self,
        from_node: u64,
        group_id: u64,
        message: &[u8],
        index: u64,
    ) -> Result<()> {
        self.guard(|d| {
            d.check_group_id(group_id)?;
            if message.len() > MESSAGE_BYTES_MAX {
                return invalid("snapshot message too large");
            }
            let message = Message::parse_from_bytes(message)
                .map_err(|error| Error::Invalid(format!("bad snapshot message: {error}")))?;
            if message.get_msg_type() != MessageType::MsgSnapshot {
                return invalid("not a MsgSnapshot");
            }
            let named = message.get_snapshot().get_metadata().index;
            if named != index {
                return invalid(format!(
                    "snapshot of index {named} came with state of index {index}"
                ));
            }
            d.check_message(from_node, &message)?;
            d.step_one(group_id, message)
        })
    }

    fn check_message(&self, from_node: u64, message: &Message) -> Result<()> {
        if !is_remote(message.get_msg_type()) {
            return invalid(format!(
                "unexpected message type {:?}",
                message.get_msg_type()
            ));
        }
        if message.from != from_node || from_node == 0 || from_node == self.config.node_id {
            return invalid(format!(
                "message from {} arrived from node {from_node}",
                message.from
            ));
        }
        if message.to != self.config.node_id {
            return invalid(format!("message to {} arrived here", message.to));
        }
        Ok(())
    }

    fn step_one(&mut self, group_id: u64, message: Message) -> Result<()> {
        if !self.groups.contains_key(&group_id) {
            if !creates_replica(message.get_msg_type()) {
                return Ok(());
            }
            self.insert_group(group_id, GroupStorage::empty(group_id), 0)?;
            self.created.push(group_id);
        }
        self.touching = Some(group_id);
        let group = self
            .groups
            .get_mut(&group_id)
            .expect("the group exists or was created");
        group.step(message, &self.down);
        Ok(())
    }

    /// Returns the index the entry gets.
    pub fn propose(&mut self, group_id: u64, data: &[u8]) -> Result<u64> {
        self.guard(|d| {
            if data.len() > PROPOSAL_BYTES_MAX {
                return invalid(format!("a proposal above {PROPOSAL_BYTES_MAX} bytes"));
            }
            let group = d.wake_leader(group_id)?;
            group
                .with(|raw| raw.propose(Vec::new(), data.to_vec()))
                .map_err(|_| Error::NotLeader {
                    // Dropped while leadership moves to the transferee.
                    leader_id: group.raw().raft.lead_transferee.unwrap_or(0),
                })?;
            Ok(group.raw().raft.raft_log.last_index())
        })
    }

    /// One `ConfChangeV2`; several changes go through a joint configuration that raft-rs
    /// leaves by itself. An empty list leaves a joint configuration explicitly.
    pub fn propose_conf_change(
        &mut self,
        group_id: u64,
        changes: &[(ConfChangeKind, u64)],
    ) -> Result<()> {
        self.guard(|d| {
            if changes.len() > MEMBERS_MAX || changes.iter().any(|&(_, id)| id == 0) {
                return invalid(format!("1 to {MEMBERS_MAX} changes of non-zero ids"));
            }
            let group = d.wake_leader(group_id)?;
            let raft = &group.raw().raft;
            // raft-rs would turn these into an empty entry and say nothing; refuse instead.
            if raft.has_pending_conf() {
                return invalid(format!(
                    "group {group_id}: a conf change is pending; retry after it is applied"
                ));
            }
            let joint = !raft.prs().conf().to_conf_state().voters_outgoing.is_empty();
            if joint != changes.is_empty() {
                return invalid(if joint {
                    "in a joint configuration; it must be left first"
                } else {
                    "no changes given and not in a joint configuration"
                });
            }
            let mut cc = ConfChangeV2::default();
            cc.set_changes(
                changes
                    .iter()
                    .map(|&(kind, node_id)| {
                        let mut single = ConfChangeSingle::default();
                        single.set_change_type(match kind {
                            ConfChangeKind::AddVoter => ConfChangeType::AddNode,
                            ConfChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
                            ConfChangeKind::Remove => ConfChangeType::RemoveNode,
                        });
                        single.node_id = node_id;
                        single
                    })
                    .collect(),
            );
            group
                .with(|raw| raw.propose_conf_change(Vec::new(), cc))
                .map_err(|_| Error::NotLeader {
                    leader_id: group.raw().raft.lead_transferee.unwrap_or(0),
                })
        })
    }

    /// The answer arrives in a later ready's `read_states` (or never, if leadership is lost
    /// or this leader has not committed in its term yet: time it out).
    pub fn read_index(&mut self, group_id: u64, ctx: &[u8]) -> Result<()> {
        self.guard(|d| {
            if ctx.len() > MESSAGE_BYTES_MAX / 2 {
                return invalid("read_index ctx too large");
            }
            if ctx == QUIESCE_CONTEXT {
                return invalid("that read_index ctx is the driver's quiesce marker");
            }
            d.wake_leader(group_id)?
                .with(|raw| raw.read_index(ctx.to_vec()));
            Ok(())
        })
    }

    pub fn transfer_leader(&mut self, group_id: u64, to: u64) -> Result<()> {
        self.guard(|d| {
            d.wake_leader(group_id)?.with(|raw| raw.transfer_leader(to));
            Ok(())
        })
    }

    pub fn has_ready(&mut self) -> Result<bool> {
        self.guard(|d| {
            Ok(!d.released.is_empty()
                || !d.created.is_empty()
                || d.groups.values().any(Group::needs_ready))
        })
    }

    /// Collect one batch from every group that has work, in group-id order.
    pub fn ready(&mut self) -> Result<Ready> {
        self.guard(|d| Ok(d.collect_ready()))
    }

    fn collect_ready(&mut self) -> Ready {
        let mut batch = Batch::default();
        let mut readies = Vec::new();
        let mut needs_snapshot = Vec::new();
        for (&group_id, group) in &mut self.groups {
            if batch.writes.len() + WRITES_PER_GROUP_MAX > WRITES_MAX {
                break;
            }
            self.touching = Some(group_id);
            if std::mem::take(&mut group.snapshot_wanted) {
                needs_snapshot.push(group_id);
            }
            if !group.pending_writes.is_empty() || group.raw().has_ready() {
                let collected = group.collect(group_id, &mut batch);
                readies.push((group_id, collected.number, collected.snapshot_index));
            }
            // After raft-rs's own messages, so a follower steps the heartbeat before the quiesce.
            batch
                .send_now
                .extend(group.outbox.drain(..).map(|message| (group_id, message)));
        }
        let mut send_now = std::mem::take(&mut self.released);
        send_now.append(&mut batch.send_now);
        let mut send_after_persist = batch.send_after_persist;
        let token = if !batch.writes.is_empty() {
            self.last_token += 1;
            self.in_flight.push_back(InFlight {
                token: self.last_token,
                readies,
                held: Vec::new(),
            });
            self.last_token
        } else if let Some(last) = self.in_flight.back_mut() {
            // Nothing to write, but a follower's reply may speak of entries an earlier batch
            // is still writing: it waits for that batch.
            last.readies.append(&mut readies);
            last.held.append(&mut send_after_persist);
            0
        } else {
            // Nothing written and nothing pending: these readies are durable already.
            for (group_id, number, _) in readies {
                self.touching = Some(group_id);
                if let Some(group) = self.groups.get_mut(&group_id) {
                    group.with(|raw| raw.on_persist_ready(number));
                }
            }
            0
        };
        let mut snapshots_out = Vec::new();
        send_now.retain(|(group_id, message)| {
            if message.get_msg_type() != MessageType::MsgSnapshot {
                return true;
            }
            let bytes = message.write_to_bytes().expect("a raft message encodes");
            snapshots_out.push((*group_id, message.to, bytes));
            false
        });
        Ready {
            token,
            must_sync: batch.must_sync,
            writes: batch.writes,
            send_now: frames(send_now),
            send_after_persist: frames(send_after_persist),
            committed: batch.committed,
            read_states: batch.read_states,
            snapshots_out,
            snapshot_installed: batch.snapshot_installed,
            needs_snapshot,
            created: std::mem::take(&mut self.created),
            roles: batch.roles,
        }
    }

    /// Every write of the ready with `token`, and of every earlier ready, is durable.
    pub fn on_persisted(&mut self, token: u64) -> Result<()> {
        self.guard(|d| {
            if token == 0 || token > d.last_token {
                return invalid(format!("unknown token {token}"));
            }
            while d
                .in_flight
                .front()
                .is_some_and(|batch| batch.token <= token)
            {
                let batch = d.in_flight.pop_front().expect("checked");
                for (group_id, number, snapshot_index) in batch.readies {
                    d.touching = Some(group_id);
                    let Some(group) = d.groups.get_mut(&group_id) else {
                        continue;
                    };
                    group.with(|raw| {
                        raw.on_persist_ready(number);
                        // The caller installed the snapshot's data with these writes.
                        if let Some(index) = snapshot_index {
                            if raw.raft.raft_log.applied < index {
                                raw.advance_apply_to(index);
                            }
                        }
                    });
                }
                d.released.extend(batch.held);
            }
            Ok(())
        })
    }

    /// The caller applies a committed conf change entry (in log order); the returned writes
    /// must be persisted atomically with its applied index for that entry.
    pub fn apply_conf_change(&mut self, group_id: u64, data: &[u8]) -> Result<Vec<Write>> {
        self.guard(|d| {
            if data.len() > CONF_CHANGE_BYTES_MAX {
                return invalid("conf change too large");
            }
            let cc = ConfChangeV2::parse_from_bytes(data)
                .map_err(|error| Error::Invalid(format!("bad conf change: {error}")))?;
            let group = d.group(group_id)?;
            let conf_state = group
                .with(|raw| raw.apply_conf_change(&cc))
                .map_err(|error| Error::Invalid(format!("conf change refused: {error}")))?;
            Ok(group.storage_mut().set_conf_state(conf_state))
        })
    }

    pub fn advance_apply(&mut self, group_id: u64, applied: u64) -> Result<()> {
        self.guard(|d| {
            let group = d.group(group_id)?;
            let log = &group.raw().raft.raft_log;
            let high = group.delivered.min(log.committed).min(log.persisted);
            if applied < log.applied || applied > high {
                return invalid(format!(
                    "applied {applied} outside {}..={high}",
                    log.applied
                ));
            }
            group.with(|raw| raw.advance_apply_to(applied));
            Ok(())
        })
    }

    pub fn register_snapshot(&mut self, group_id: u64, applied: u64) -> Result<()> {
        self.guard(|d| {
            let group = d.group(group_id)?;
            if applied > group.delivered {
                return invalid(format!(
                    "applied {applied} beyond what was delivered ({})",
                    group.delivered
                ));
            }
            group
                .storage_mut()
                .register_snapshot(applied)
                .map_err(Error::Invalid)
        })
    }

    pub fn compact(&mut self, group_id: u64, to_index: u64) -> Result<Vec<Write>> {
        self.guard(|d| {
            let group = d.group(group_id)?;
            let applied = group.raw().raft.raft_log.applied;
            if to_index > applied {
                return invalid(format!("compact to {to_index} beyond applied {applied}"));
            }
            group
                .storage_mut()
                .compact(to_index)
                .map_err(Error::Invalid)
        })
    }

    pub fn report_snapshot(&mut self, group_id: u64, to: u64, ok: bool) -> Result<()> {
        self.guard(|d| {
            let status = if ok {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            d.group(group_id)?
                .with(|raw| raw.report_snapshot(to, status));
            Ok(())
        })
    }

    pub fn report_unreachable(&mut self, group_id: u64, to: u64) -> Result<()> {
        self.guard(|d| {
            d.group(group_id)?.with(|raw| raw.report_unreachable(to));
            Ok(())
        })
    }

    pub fn status(&mut self, group_id: u64) -> Result<GroupStatus> {
        self.guard(|d| {
            let group = d.group(group_id)?;
            let raft = &group.raw().raft;
            let conf = raft.prs().conf().to_conf_state();
            let progress = (raft.state == StateRole::Leader).then(|| {
                let mut progress: Vec<(u64, u64)> = raft
                    .prs()
                    .iter()
                    .map(|(&id, pr)| (id, pr.matched))
                    .collect();
                progress.sort_unstable();
                progress
            });
            Ok(GroupStatus {
                role: role_of(raft.state),
                term: raft.term,
                leader_id: raft.leader_id,
                commit: raft.raft_log.committed,
                applied: raft.raft_log.applied,
                first_index: raft.raft_log.first_index(),
                last_index: raft.raft_log.last_index(),
                voters: conf.voters,
                voters_outgoing: conf.voters_outgoing,
                learners: conf.learners,
                progress,
                quiet: group.is_quiet(),
            })
        })
    }
}

/// One frame per destination (more only past a frame limit), destinations in node order.
fn frames(messages: Vec<(u64, Message)>) -> Vec<(u64, Vec<u8>)> {
    let mut builders: BTreeMap<u64, FrameBuilder> = BTreeMap::new();
    for (group_id, message) in &messages {
        builders
            .entry(message.to)
            .or_default()
            .push(*group_id, message);
    }
    builders
        .into_iter()
        .flat_map(|(to, builder)| builder.finish().into_iter().map(move |f| (to, f)))
        .collect()
}
