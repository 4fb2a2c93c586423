//! An in-memory cluster of drivers for tests: frames travel through a FIFO network, writes go
//! into a model of the caller's store (with `pyagent.proto.memstore` semantics), and each node
//! runs a tiny state machine (the list of applied values) that snapshots carry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{HardState, Message, MessageType};

use crate::multiraft::frame;
use crate::multiraft::{
    Committed, Config, Driver, EntryKind, Ready, Role, Write, INIT_INDEX, KEY_PREFIX,
};

/// The caller's durable store, as far as the driver is concerned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Model {
    pub kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub logs: BTreeMap<String, (u64, Vec<Vec<u8>>)>,
}

impl Model {
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::Put { key, value } => {
                assert!(key.starts_with(KEY_PREFIX));
                self.kvs.insert(key.clone(), value.clone());
            }
            Write::Append {
                log,
                first_index,
                entries,
            } => {
                assert!(!entries.is_empty());
                let (first, held) = self
                    .logs
                    .entry(log.clone())
                    .or_insert((*first_index, Vec::new()));
                if held.is_empty() {
                    *first = *first_index;
                }
                let last = *first + held.len() as u64;
                assert!(
                    *first <= *first_index && *first_index <= last,
                    "append at {first_index} to {log} holding {first}..{last}"
                );
                held.truncate((*first_index - *first) as usize);
                held.extend(entries.iter().cloned());
            }
            Write::Truncate { log, from_index } => {
                if let Some((first, held)) = self.logs.get_mut(log) {
                    held.truncate(from_index.saturating_sub(*first) as usize);
                }
            }
            Write::Compact { log, to_index } => {
                if let Some((first, held)) = self.logs.get_mut(log) {
                    if *to_index > *first {
                        let drop = ((*to_index - *first) as usize).min(held.len());
                        held.drain(..drop);
                        *first = *to_index;
                    }
                }
            }
        }
    }

    /// The last durable log index of a group: its last entry, or its snapshot when the log is empty.
    pub fn last_index(&self, group_id: u64) -> u64 {
        if let Some((first, held)) = self.logs.get(&format!("r/{group_id}")) {
            if !held.is_empty() {
                return first + held.len() as u64 - 1;
            }
        }
        self.kvs
            .get(format!("r/{group_id}/ts").as_bytes())
            .map_or(0, |v| u64::from_be_bytes(v[..8].try_into().unwrap()))
    }

    pub fn hard_state(&self, group_id: u64) -> HardState {
        self.kvs
            .get(format!("r/{group_id}/hs").as_bytes())
            .map(|v| HardState::parse_from_bytes(v).unwrap())
            .unwrap_or_default()
    }
}

/// The state machine: every non-empty normal entry's data, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sm {
    pub applied: u64,
    pub values: Vec<Vec<u8>>,
}

pub struct Node {
    pub config: Config,
    pub driver: Driver,
    pub store: Model,
    /// Writes handed out but not yet durable, and the token that covers them.
    volatile: Vec<Write>,
    token: u64,
    /// `send_after_persist` frames waiting for `sync`.
    held: Vec<(u64, Vec<u8>)>,
    pub sm: BTreeMap<u64, Sm>,
    sm_durable: BTreeMap<u64, Sm>,
    /// Registered snapshots: group -> state at its index.
    captured: BTreeMap<u64, Sm>,
    /// Snapshot data received by bulk transfer, waiting for `snapshot_installed`.
    incoming: BTreeMap<u64, Sm>,
    pub readies: Vec<Ready>,
}

impl Node {
    fn new(config: Config) -> Self {
        Self {
            driver: Driver::new(config.clone()).unwrap(),
            config,
            store: Model::default(),
            volatile: Vec::new(),
            token: 0,
            held: Vec::new(),
            sm: BTreeMap::new(),
            sm_durable: BTreeMap::new(),
            captured: BTreeMap::new(),
            incoming: BTreeMap::new(),
            readies: Vec::new(),
        }
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    net: VecDeque<(u64, u64, Vec<u8>)>,
    /// `(from, to, group, MsgSnapshot bytes, state)` in bulk transfer.
    bulk: VecDeque<(u64, u64, u64, Vec<u8>, Sm)>,
    /// Nodes cut off: frames to and from them are lost.
    pub cut: BTreeSet<u64>,
    /// When false, writes stay volatile until `sync` (and are lost by `crash`).
    pub sync_writes: bool,
    /// Everything observable that nodes did, to compare runs.
    pub transcript: Vec<String>,
    /// Readies with writes that needed no fsync (a commit index, say).
    pub unsynced_readies: usize,
}

pub fn decode_frame(frame: &[u8]) -> Vec<(u64, Message)> {
    frame::decode(frame, 1 << 20).unwrap()
}

impl Cluster {
    pub fn new(ids: &[u64], seed: u64) -> Self {
        let nodes = ids
            .iter()
            .map(|&id| (id, Node::new(Config::new(id, seed.wrapping_mul(1000) + id))))
            .collect();
        Self {
            nodes,
            net: VecDeque::new(),
            bulk: VecDeque::new(),
            cut: BTreeSet::new(),
            sync_writes: true,
            transcript: Vec::new(),
            unsynced_readies: 0,
        }
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    pub fn bootstrap(&mut self, group_id: u64, voters: &[u64]) {
        for &id in voters {
            let node = self.node(id);
            node.driver.bootstrap_group(group_id, voters).unwrap();
            let sm = Sm {
                applied: INIT_INDEX,
                values: Vec::new(),
            };
            node.sm.insert(group_id, sm.clone());
            node.sm_durable.insert(group_id, sm);
        }
    }

    /// Handle every ready of one node.
    pub fn process(&mut self, id: u64) {
        while self.node(id).driver.has_ready().unwrap() {
            let ready = self.node(id).driver.ready().unwrap();
            self.handle(id, ready);
        }
    }

    fn handle(&mut self, id: u64, ready: Ready) {
        self.transcript.push(format!(
            "{id}: token {} writes {:?} now {:?} later {:?} roles {:?} committed {:?}",
            ready.token,
            ready.writes,
            ready.send_now,
            ready.send_after_persist,
            ready.roles,
            ready.committed,
        ));
        self.check_replies_are_durable(id, &ready);
        let appends = ready
            .writes
            .iter()
            .any(|w| matches!(w, Write::Append { .. }));
        assert!(
            ready.must_sync || !appends,
            "{id}: new entries must be fsynced"
        );
        if !ready.writes.is_empty() && !ready.must_sync {
            self.unsynced_readies += 1;
        }
        for (to, frame) in &ready.send_now {
            self.net.push_back((id, *to, frame.clone()));
        }
        for (group_id, to, message) in &ready.snapshots_out {
            let meta_index = Message::parse_from_bytes(message)
                .unwrap()
                .get_snapshot()
                .get_metadata()
                .index;
            let state = self.node(id).captured[group_id].clone();
            assert_eq!(state.applied, meta_index);
            self.bulk
                .push_back((id, *to, *group_id, message.clone(), state));
        }
        let node = self.node(id);
        node.volatile.extend(ready.writes.iter().cloned());
        if ready.token != 0 {
            node.token = ready.token;
            node.held.extend(ready.send_after_persist.iter().cloned());
        } else {
            let frames = ready.send_after_persist.clone();
            self.net
                .extend(frames.into_iter().map(|(to, f)| (id, to, f)));
        }
        let node = self.node(id);
        for (group_id, index) in &ready.snapshot_installed {
            let state = node
                .incoming
                .remove(group_id)
                .expect("snapshot data arrived");
            assert_eq!(state.applied, *index);
            node.sm.insert(*group_id, state);
        }
        apply(node, &ready.committed);
        for group_id in &ready.needs_snapshot {
            let state = node.sm[group_id].clone();
            node.driver
                .register_snapshot(*group_id, state.applied)
                .unwrap();
            node.captured.insert(*group_id, state);
        }
        node.readies.push(ready);
        if self.sync_writes {
            self.sync(id);
        }
    }

    /// A follower's reply that leaves at once must speak only of durable state.
    fn check_replies_are_durable(&self, id: u64, ready: &Ready) {
        let node = &self.nodes[&id];
        for (_, frame) in &ready.send_now {
            for (group_id, message) in decode_frame(frame) {
                match message.get_msg_type() {
                    MessageType::MsgAppendResponse if !message.reject => {
                        assert!(
                            message.index <= node.store.last_index(group_id),
                            "node {id} acks {} of group {group_id} before it is durable",
                            message.index
                        );
                    }
                    MessageType::MsgRequestVoteResponse if !message.reject => {
                        let hs = node.store.hard_state(group_id);
                        assert_eq!((hs.term, hs.vote), (message.term, message.to));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Make a node's writes durable and tell its driver.
    pub fn sync(&mut self, id: u64) {
        let node = self.node(id);
        for write in std::mem::take(&mut node.volatile) {
            node.store.apply(&write);
        }
        node.sm_durable = node.sm.clone();
        if node.token != 0 {
            node.driver
                .on_persisted(std::mem::take(&mut node.token))
                .unwrap();
        }
        let held = std::mem::take(&mut node.held);
        self.net.extend(held.into_iter().map(|(to, f)| (id, to, f)));
    }

    /// Drop a group's log below `to_index` on one node, as a caller's log GC would.
    pub fn compact(&mut self, id: u64, group_id: u64, to_index: u64) {
        let writes = self.node(id).driver.compact(group_id, to_index).unwrap();
        self.node(id).volatile.extend(writes);
        if self.sync_writes {
            self.sync(id);
        }
    }

    /// Lose everything not durable and restart the node from its store.
    pub fn crash(&mut self, id: u64) {
        let node = self.node(id);
        node.driver = Driver::new(node.config.clone()).unwrap();
        node.volatile.clear();
        node.token = 0;
        node.held.clear();
        node.captured.clear();
        node.incoming.clear();
        node.sm = node.sm_durable.clone();
        let kvs: Vec<_> = node.store.kvs.clone().into_iter().collect();
        let applied = node.sm.iter().map(|(&g, sm)| (g, sm.applied)).collect();
        let recovered = node
            .driver
            .recover(&kvs, &node.store.logs, &applied)
            .unwrap();
        assert_eq!(recovered, node.sm.keys().copied().collect::<Vec<_>>());
    }

    /// Deliver what is in the network and process every node until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for &id in &ids {
                self.process(id);
            }
            if self.net.is_empty() && self.bulk.is_empty() {
                return;
            }
            while let Some((from, to, frame)) = self.net.pop_front() {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.driver.step(from, &frame).unwrap();
                }
            }
            while let Some((from, to, group_id, message, state)) = self.bulk.pop_front() {
                let delivered = !self.cut.contains(&from) && !self.cut.contains(&to);
                if delivered {
                    let node = self.node(to);
                    node.incoming.insert(group_id, state);
                    let index = Message::parse_from_bytes(&message)
                        .unwrap()
                        .get_snapshot()
                        .get_metadata()
                        .index;
                    node.driver
                        .step_snapshot(from, group_id, &message, index)
                        .unwrap();
                }
                self.node(from)
                    .driver
                    .report_snapshot(group_id, to, delivered)
                    .unwrap();
            }
        }
        panic!("the cluster did not settle");
    }

    pub fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.driver.tick().unwrap();
        }
        self.settle();
    }

    pub fn leader_of(&mut self, group_id: u64) -> Option<u64> {
        let cut = self.cut.clone();
        self.nodes.iter_mut().find_map(|(&id, node)| {
            let status = node.driver.status(group_id).ok()?;
            (status.role == Role::Leader && !cut.contains(&id)).then_some(id)
        })
    }

    /// Tick until every group has a leader (and it committed its first entry).
    pub fn elect(&mut self, groups: &[u64]) {
        for _ in 0..500 {
            self.tick();
            if groups.iter().all(|&g| self.leader_of(g).is_some()) {
                for _ in 0..3 {
                    self.tick();
                }
                return;
            }
        }
        panic!("no leader elected");
    }

    pub fn propose(&mut self, group_id: u64, data: &[u8]) -> u64 {
        let leader = self.leader_of(group_id).expect("a leader");
        self.node(leader).driver.propose(group_id, data).unwrap()
    }

    /// Frames every node has handed out so far (both lanes).
    pub fn frames_sent(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|node| &node.readies)
            .map(|ready| ready.send_now.len() + ready.send_after_persist.len())
            .sum()
    }

    /// Cut `id` off, and let membership on both sides notice.
    pub fn isolate(&mut self, id: u64) {
        self.cut.insert(id);
        self.tell_both_sides(id, false);
    }

    /// Heal what `isolate(id)` did.
    pub fn rejoin(&mut self, id: u64) {
        self.cut.remove(&id);
        self.tell_both_sides(id, true);
    }

    fn tell_both_sides(&mut self, id: u64, up: bool) {
        self.tell_membership(id, up);
        let others: Vec<u64> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        let driver = &mut self.node(id).driver;
        for other in others {
            if up {
                driver.peer_up(other).unwrap();
            } else {
                driver.peer_down(other).unwrap();
            }
        }
    }

    /// Membership on every other node holds `id` down (`up` false) or alive again.
    pub fn tell_membership(&mut self, id: u64, up: bool) {
        for (&other, node) in &mut self.nodes {
            if other != id {
                if up {
                    node.driver.peer_up(id).unwrap();
                } else {
                    node.driver.peer_down(id).unwrap();
                }
            }
        }
    }

    pub fn is_quiet(&mut self, id: u64, group_id: u64) -> bool {
        self.node(id).driver.status(group_id).unwrap().quiet
    }

    pub fn values(&self, id: u64, group_id: u64) -> Vec<Vec<u8>> {
        self.nodes[&id].sm[&group_id].values.clone()
    }
}

fn apply(node: &mut Node, committed: &[Committed]) {
    let mut touched = BTreeSet::new();
    for entry in committed {
        let sm = node.sm.get_mut(&entry.group_id).expect("a state machine");
        assert_eq!(entry.index, sm.applied + 1, "entries are applied in order");
        sm.applied = entry.index;
        match entry.kind {
            EntryKind::Normal if !entry.data.is_empty() => sm.values.push(entry.data.clone()),
            EntryKind::Normal => {}
            EntryKind::ConfChange => {
                let writes = node
                    .driver
                    .apply_conf_change(entry.group_id, &entry.data)
                    .unwrap();
                node.volatile.extend(writes);
            }
        }
        touched.insert(entry.group_id);
    }
    for group_id in touched {
        let applied = node.sm[&group_id].applied;
        node.driver.advance_apply(group_id, applied).unwrap();
    }
}
