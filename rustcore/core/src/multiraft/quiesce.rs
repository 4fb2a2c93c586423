//! Quiescence: an idle group stops ticking on every replica, so it sends nothing.
//!
//! raft-rs has no hibernation of its own; the driver gets it by not calling `tick()` on a quiet
//! group (in the spirit of TiKV's hibernate regions and CockroachDB's quiescence):
//!
//! - A leader whose group is settled ([`is_settled`]: every live replica holds and has acknowledged
//!   its whole log, all of it committed, applied and durable, nothing pending) for `election_tick`
//!   ticks goes quiet and sends each replica one *quiesce heartbeat* ([`quiesce_heartbeat`]): a
//!   `MsgHeartbeat` whose context is [`QUIESCE_CONTEXT`] and which names the leader's last index
//!   and term.
//! - A follower whose log ends exactly there goes quiet too ([`accept_quiesce`]), without stepping
//!   the heartbeat: its reply would wake the leader. A follower whose log does not fit (or a replica
//!   that is no follower of this leader) steps it as an ordinary heartbeat instead: it wakes and
//!   answers, and an answer that shows it behind wakes the leader, which brings it up to date.
//! - Any proposal, read, conf change or leadership transfer wakes the group, and so does any
//!   message from a peer, except the answers a quiet leader still gets to its last messages
//!   (heartbeat and append replies of its term that leave the group settled).
//! - Followers of a quiet group cannot notice a dead leader by timeout, so the caller tells the
//!   driver when membership holds a peer down or up again (`Driver::peer_down`, `peer_up`), which
//!   wakes every group that peer is in. A woken leader forgets who was recently active, so check
//!   quorum judges the time since the wake: a leader cut off steps down one election timeout
//!   after it is woken.
//!
//! None of this draws random numbers: election timeouts are drawn only on term and role changes
//! (`group`), so a seed replays the same elections whether or not groups went quiet.

use std::collections::BTreeSet;

use raft::eraftpb::{Message, MessageType};
use raft::{ProgressState, Raft, StateRole};

use super::storage::GroupStorage;

/// The context of a quiesce heartbeat. raft-rs puts a ReadIndex's own context in the heartbeats
/// of a read, so the driver refuses this one as a read's context.
pub const QUIESCE_CONTEXT: &[u8] = b"pyagent/quiesce";

/// A leader may go quiet: it is not moving leadership or configuration, serves no read, and every
/// replica not in `down` has acknowledged its whole log, which is committed, applied and durable
/// here and ends with an entry of this term (so a read after waking needs no new commit). The
/// replicas acknowledging it, the leader included, must be a quorum, so a leader that lost its
/// quorum stays awake until check quorum steps it down.
pub fn is_settled(raft: &Raft<GroupStorage>, down: &BTreeSet<u64>) -> bool {
    let log = &raft.raft_log;
    let last = log.last_index();
    if raft.state != StateRole::Leader
        || raft.lead_transferee.is_some()
        || raft.has_pending_conf()
        || raft.pending_read_count() > 0
        || log.committed != last
        || log.persisted != last
        || log.applied != last
        || log.term(last) != Ok(raft.term)
    {
        return false;
    }
    for (&id, progress) in raft.prs().iter() {
        let caught_up = progress.matched == last && progress.state == ProgressState::Replicate;
        if id != raft.id && !caught_up && !down.contains(&id) {
            return false;
        }
    }
    let conf = raft.prs().conf().to_conf_state();
    if !conf.voters_outgoing.is_empty() {
        return false;
    }
    let live = conf
        .voters
        .iter()
        .filter(|&id| *id == raft.id || !down.contains(id))
        .count();
    2 * live > conf.voters.len()
}

/// The quiesce heartbeat a settled leader sends `to`. Its commit index is, as in raft-rs's own
/// heartbeats, no further than what `to` is known to hold, so that stepping it as an ordinary
/// heartbeat is safe on any replica.
pub fn quiesce_heartbeat(raft: &Raft<GroupStorage>, to: u64) -> Message {
    let last = raft.raft_log.last_index();
    let matched = raft.prs().get(to).map_or(0, |progress| progress.matched);
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    message.from = raft.id;
    message.to = to;
    message.term = raft.term;
    message.index = last;
    message.log_term = raft.term;
    message.commit = raft.raft_log.committed.min(matched);
    message.context = QUIESCE_CONTEXT.to_vec().into();
    message
}

pub fn is_quiesce_heartbeat(message: &Message) -> bool {
    message.get_msg_type() == MessageType::MsgHeartbeat && message.context == QUIESCE_CONTEXT
}

/// A follower takes a quiesce heartbeat from its leader whose log is exactly its own, durable: it
/// learns the commit index (as from any heartbeat) and restarts its election timer, as if it had
/// just heard from the leader, which it has. Returns whether it may go quiet.
pub fn accept_quiesce(raft: &mut Raft<GroupStorage>, message: &Message) -> bool {
    let log = &raft.raft_log;
    let fits = raft.state == StateRole::Follower
        && raft.term == message.term
        && raft.leader_id == message.from
        && log.last_index() == message.index
        && log.persisted == message.index
        && log.term(message.index) == Ok(message.log_term)
        && message.commit <= message.index;
    if fits {
        raft.raft_log.commit_to(message.commit);
        raft.election_elapsed = 0;
    }
    fits
}

/// A leader woken after being quiet: its record of who answered lately is as old as its quiet
/// spell, so it starts afresh; check quorum then comes a full election timeout later.
pub fn forget_activity(raft: &mut Raft<GroupStorage>) {
    if raft.state != StateRole::Leader {
        return;
    }
    let own = raft.id;
    raft.election_elapsed = 0;
    for (&id, progress) in raft.mut_prs().iter_mut() {
        progress.recent_active = id == own;
    }
}
