//! Idle groups go quiet, wake on work and on membership news, and still elect and step down.

use raft::eraftpb::{Message, MessageType};

use super::harness::{decode_frame, Cluster};
use super::{groups, three_nodes};
use crate::multiraft::frame::FrameBuilder;
use crate::multiraft::quiesce::QUIESCE_CONTEXT;
use crate::multiraft::{Config, Error, Role};

const GROUPS: u64 = 4;
/// Ticks after which a settled group is quiet everywhere: the leader waits an election timeout
/// (`Config::new`'s 10 ticks) of settled ticks, with slack for the last commit to spread.
const SETTLE_TICKS: usize = 30;
/// Long enough for several election timeouts to pass.
const LONG_TICKS: usize = 200;

fn election_tick() -> usize {
    Config::new(1, 0).election_tick
}

fn ticks(cluster: &mut Cluster, count: usize) {
    for _ in 0..count {
        cluster.tick();
    }
}

fn all_quiet(cluster: &mut Cluster, group_id: u64) -> bool {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    ids.into_iter().all(|id| cluster.is_quiet(id, group_id))
}

/// A mesh whose groups each took a write and then went quiet everywhere.
fn quiet_mesh(seed: u64) -> Cluster {
    let mut cluster = three_nodes(seed, GROUPS);
    for group_id in groups(GROUPS) {
        cluster.propose(group_id, b"first");
    }
    cluster.settle();
    ticks(&mut cluster, SETTLE_TICKS);
    for group_id in groups(GROUPS) {
        assert!(
            all_quiet(&mut cluster, group_id),
            "group {group_id} is not quiet"
        );
    }
    cluster
}

fn other_than(id: u64) -> Vec<u64> {
    (1..=3).filter(|&other| other != id).collect()
}

#[test]
fn an_idle_group_goes_quiet_and_sends_nothing() {
    let mut cluster = quiet_mesh(21);
    let before = cluster.frames_sent();
    ticks(&mut cluster, LONG_TICKS);
    assert_eq!(cluster.frames_sent(), before, "a quiet mesh sent frames");
    assert!(election_tick() < SETTLE_TICKS);
}

#[test]
fn a_busy_group_does_not_go_quiet() {
    let mut cluster = three_nodes(22, 1);
    for round in 0..LONG_TICKS {
        cluster.propose(0, format!("{round}").as_bytes());
        cluster.tick();
        let leader = cluster.leader_of(0).unwrap();
        assert!(!cluster.is_quiet(leader, 0));
    }
}

#[test]
fn a_proposal_wakes_a_quiet_group_and_it_goes_quiet_again() {
    let mut cluster = quiet_mesh(23);
    cluster.propose(1, b"wake");
    cluster.settle();
    for id in 1..=3 {
        assert_eq!(
            cluster.values(id, 1),
            vec![b"first".to_vec(), b"wake".to_vec()]
        );
        assert!(
            !cluster.is_quiet(id, 1),
            "node {id} still quiet after the append"
        );
        // The other groups slept through it.
        assert!(cluster.is_quiet(id, 0));
    }
    ticks(&mut cluster, SETTLE_TICKS);
    assert!(all_quiet(&mut cluster, 1));
}

#[test]
fn a_read_wakes_a_quiet_leader_and_is_answered() {
    let mut cluster = quiet_mesh(24);
    let leader = cluster.leader_of(2).unwrap();
    cluster.node(leader).driver.read_index(2, b"r1").unwrap();
    cluster.settle();
    assert!(!cluster.is_quiet(leader, 2));
    let answered = cluster.node(leader).readies.iter().any(|ready| {
        ready
            .read_states
            .iter()
            .any(|(group, ctx, _)| *group == 2 && ctx == b"r1")
    });
    assert!(answered, "the read was not answered");
    ticks(&mut cluster, SETTLE_TICKS);
    assert!(all_quiet(&mut cluster, 2));
}

#[test]
fn a_quiet_group_whose_leader_died_elects_after_the_membership_wake() {
    let mut cluster = quiet_mesh(25);
    let dead = cluster.leader_of(0).unwrap();
    cluster.cut.insert(dead);
    // Nothing ticks, so nothing notices: the followers wait for news.
    ticks(&mut cluster, LONG_TICKS);
    assert_eq!(cluster.leader_of(0), None);
    cluster.tell_membership(dead, false);
    ticks(&mut cluster, LONG_TICKS);
    let leader = cluster.leader_of(0).expect("a new leader");
    assert_ne!(leader, dead);
    cluster.propose(0, b"after");
    cluster.settle();
    for id in other_than(dead) {
        assert_eq!(cluster.values(id, 0).last().unwrap(), b"after");
    }
    // The survivors go quiet again without the dead replica.
    ticks(&mut cluster, SETTLE_TICKS);
    for id in other_than(dead) {
        assert!(
            cluster.is_quiet(id, 0),
            "node {id} awake without the dead replica"
        );
    }
}

#[test]
fn a_quiet_leader_cut_off_steps_down_once_woken_and_the_majority_elects() {
    let mut cluster = quiet_mesh(26);
    let cut_off = cluster.leader_of(3).unwrap();
    cluster.isolate(cut_off);
    ticks(&mut cluster, 3 * election_tick());
    let status = cluster.node(cut_off).driver.status(3).unwrap();
    assert_ne!(status.role, Role::Leader, "the cut-off leader kept leading");
    assert!(
        !status.quiet,
        "the cut-off replica went quiet without a quorum"
    );
    ticks(&mut cluster, LONG_TICKS);
    let leader = cluster.leader_of(3).expect("the majority elected");
    assert_ne!(leader, cut_off);
    // The heal: the old leader rejoins, catches up, and the group goes quiet everywhere.
    cluster.propose(3, b"while cut");
    cluster.settle();
    cluster.rejoin(cut_off);
    ticks(&mut cluster, 2 * SETTLE_TICKS);
    assert_eq!(cluster.values(cut_off, 3).last().unwrap(), b"while cut");
    assert!(all_quiet(&mut cluster, 3));
}

#[test]
fn a_restarted_node_starts_awake_and_the_group_goes_quiet_again() {
    let mut cluster = quiet_mesh(27);
    cluster.crash(2);
    for group_id in groups(GROUPS) {
        assert!(!cluster.is_quiet(2, group_id));
    }
    ticks(&mut cluster, LONG_TICKS);
    for group_id in groups(GROUPS) {
        assert!(cluster.leader_of(group_id).is_some());
        assert!(
            all_quiet(&mut cluster, group_id),
            "group {group_id} stayed awake"
        );
    }
}

#[test]
fn quiet_groups_and_wakes_replay_from_the_seed() {
    let run = |seed: u64| {
        let mut cluster = quiet_mesh(seed);
        let first = cluster.leader_of(0).unwrap();
        cluster.cut.insert(first);
        cluster.tell_membership(first, false);
        ticks(&mut cluster, LONG_TICKS);
        cluster.cut.clear();
        cluster.tell_membership(first, true);
        for group_id in groups(GROUPS) {
            cluster.propose(group_id, b"after");
        }
        ticks(&mut cluster, SETTLE_TICKS);
        let leaders: Vec<_> = groups(GROUPS)
            .iter()
            .map(|&g| cluster.leader_of(g).unwrap())
            .collect();
        (leaders, cluster.transcript)
    };
    let (leaders, transcript) = run(42);
    assert_eq!(run(42), (leaders, transcript.clone()));
    assert_ne!(run(43).1, transcript);
}

#[test]
fn a_quiesce_heartbeat_that_does_not_fit_is_answered_as_a_heartbeat() {
    let mut cluster = three_nodes(28, 1);
    let leader = cluster.leader_of(0).unwrap();
    let follower = other_than(leader)[0];
    let status = cluster.node(leader).driver.status(0).unwrap();
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    (message.from, message.to, message.term) = (leader, follower, status.term);
    // One entry beyond the follower's log: it must not go quiet on it.
    (message.index, message.log_term) = (status.last_index + 1, status.term);
    message.commit = status.commit;
    message.context = QUIESCE_CONTEXT.to_vec().into();
    let mut builder = FrameBuilder::default();
    builder.push(0, &message);
    let frame = builder.finish().remove(0);
    let node = cluster.node(follower);
    node.driver.step(leader, &frame).unwrap();
    assert!(!node.driver.status(0).unwrap().quiet);
    let ready = node.driver.ready().unwrap();
    let answers: Vec<_> = [ready.send_now, ready.send_after_persist]
        .concat()
        .iter()
        .flat_map(|(_, frame)| decode_frame(frame))
        .map(|(_, m)| (m.get_msg_type(), m.to))
        .collect();
    assert_eq!(answers, vec![(MessageType::MsgHeartbeatResponse, leader)]);
}

#[test]
fn the_quiesce_marker_is_refused_as_a_read_context() {
    let mut cluster = three_nodes(29, 1);
    let leader = cluster.leader_of(0).unwrap();
    let refused = cluster.node(leader).driver.read_index(0, QUIESCE_CONTEXT);
    assert!(matches!(refused, Err(Error::Invalid(_))));
}
