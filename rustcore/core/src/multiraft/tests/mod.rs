//! The driver's behaviour, on an in-memory cluster (see `harness`).

mod harness;
mod quiesce;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::frame::FrameBuilder;
use super::{ConfChangeKind, Config, Driver, Error, Role, Write, INIT_INDEX};
use harness::{decode_frame, Cluster};

pub(super) fn groups(n: u64) -> Vec<u64> {
    (0..n).collect()
}

pub(super) fn three_nodes(seed: u64, group_count: u64) -> Cluster {
    let mut cluster = Cluster::new(&[1, 2, 3], seed);
    for group_id in groups(group_count) {
        cluster.bootstrap(group_id, &[1, 2, 3]);
    }
    cluster.elect(&groups(group_count));
    cluster
}

#[test]
fn a_single_voter_group_elects_itself_and_commits() {
    let mut cluster = Cluster::new(&[1], 7);
    cluster.bootstrap(3, &[1]);
    cluster.elect(&[3]);
    let index = cluster.propose(3, b"x");
    // The new leader's empty entry is at INIT_INDEX + 1.
    assert_eq!(index, INIT_INDEX + 2);
    cluster.settle();
    assert_eq!(cluster.values(1, 3), vec![b"x".to_vec()]);
    let status = cluster.node(1).driver.status(3).unwrap();
    assert_eq!(
        (status.role, status.commit, status.applied),
        (Role::Leader, index, index)
    );
    assert_eq!(status.progress, Some(vec![(1, index)]));
}

#[test]
fn only_new_entries_terms_votes_and_snapshots_need_an_fsync() {
    // The harness asserts on every ready that appended entries come with must_sync.
    let mut cluster = three_nodes(5, 2);
    for _ in 0..5 {
        cluster.propose(0, b"v");
        cluster.settle();
    }
    assert!(
        cluster.unsynced_readies > 0,
        "a commit index alone is written without an fsync"
    );
}

#[test]
fn many_groups_share_one_write_batch_and_one_frame_per_peer() {
    let mut cluster = three_nodes(11, 24);
    // The first ready after bootstrap carried every group's initial state in one batch.
    let first = &cluster.node(1).readies[0];
    let puts = first
        .writes
        .iter()
        .filter(|w| matches!(w, Write::Put { .. }))
        .count();
    assert_eq!(puts, 24 * 3);
    for group_id in groups(24) {
        cluster.propose(group_id, format!("v{group_id}").as_bytes());
    }
    let leaders: Vec<u64> = groups(24)
        .iter()
        .map(|&g| cluster.leader_of(g).unwrap())
        .collect();
    let busiest = (1..=3)
        .max_by_key(|id| leaders.iter().filter(|l| *l == id).count())
        .unwrap();
    let led = leaders.iter().filter(|&&l| l == busiest).count();
    assert!(led >= 8);
    let ready = cluster.node(busiest).driver.ready().unwrap();
    let appended = ready
        .writes
        .iter()
        .filter(|w| matches!(w, Write::Append { .. }))
        .count();
    assert_eq!(appended, led, "one batch holds every led group's appends");
    assert_ne!(ready.token, 0);
    let destinations: Vec<u64> = ready.send_now.iter().map(|(to, _)| *to).collect();
    assert_eq!(
        destinations.len(),
        2,
        "one frame per peer: {destinations:?}"
    );
    for (_, frame) in &ready.send_now {
        assert_eq!(decode_frame(frame).len(), led);
    }
    // Hand the ready back to the harness's loop by persisting it by hand.
    for write in &ready.writes {
        cluster.node(busiest).store.apply(write);
    }
    cluster
        .node(busiest)
        .driver
        .on_persisted(ready.token)
        .unwrap();
    for (to, frame) in ready.send_now {
        cluster.node(to).driver.step(busiest, &frame).unwrap();
    }
    cluster.settle();
    for group_id in groups(24) {
        for id in 1..=3 {
            assert_eq!(
                cluster.values(id, group_id),
                vec![format!("v{group_id}").into_bytes()]
            );
        }
    }
    // Groups heartbeat until they go quiet, in one frame per peer per ready.
    for _ in 0..5 {
        cluster.tick();
    }
    for node in cluster.nodes.values() {
        for ready in &node.readies {
            for list in [&ready.send_now, &ready.send_after_persist] {
                let mut seen: Vec<u64> = list.iter().map(|(to, _)| *to).collect();
                seen.dedup();
                assert_eq!(seen.len(), list.len());
            }
        }
    }
}

#[test]
fn a_follower_replies_only_after_its_writes_are_durable() {
    let mut cluster = three_nodes(5, 1);
    cluster.sync_writes = false;
    let leader = cluster.leader_of(0).unwrap();
    cluster.propose(0, b"a");
    // Replication happens before the leader's own fsync: its appends are in send_now.
    cluster.process(leader);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    cluster.settle();
    let ready = cluster
        .node(follower)
        .readies
        .iter()
        .rev()
        .find(|r| r.writes.iter().any(|w| matches!(w, Write::Append { .. })))
        .cloned()
        .expect("the follower appended");
    let types = |frames: &[(u64, Vec<u8>)]| -> Vec<MessageType> {
        frames
            .iter()
            .flat_map(|(_, f)| decode_frame(f))
            .map(|(_, m)| m.get_msg_type())
            .collect()
    };
    assert!(!types(&ready.send_now).contains(&MessageType::MsgAppendResponse));
    assert!(types(&ready.send_after_persist).contains(&MessageType::MsgAppendResponse));
    // Nothing commits until fsyncs happen; then everything does.
    assert!(cluster.values(leader, 0).is_empty());
    for _ in 0..4 {
        for id in 1..=3 {
            cluster.sync(id);
        }
        cluster.settle();
    }
    for id in 1..=3 {
        assert_eq!(cluster.values(id, 0), vec![b"a".to_vec()]);
    }
}

/// Leaders, terms and every byte sent depend only on the seeds and the inputs.
#[test]
fn elections_replay_from_the_seed() {
    let run = |seed: u64| {
        let mut cluster = three_nodes(seed, 6);
        let first = cluster.leader_of(0).unwrap();
        cluster.cut.insert(first);
        for _ in 0..60 {
            cluster.tick();
        }
        cluster.cut.clear();
        for _ in 0..30 {
            cluster.tick();
        }
        for group_id in groups(6) {
            cluster.propose(group_id, b"after");
        }
        cluster.settle();
        let leaders: Vec<_> = groups(6)
            .iter()
            .map(|&g| {
                let leader = cluster.leader_of(g).unwrap();
                (leader, cluster.node(leader).driver.status(g).unwrap().term)
            })
            .collect();
        (leaders, cluster.transcript)
    };
    let (leaders, transcript) = run(42);
    assert_eq!(run(42), (leaders.clone(), transcript.clone()));
    let (_, other) = run(43);
    assert_ne!(other, transcript);
}

#[test]
fn a_new_replica_gets_a_snapshot_then_becomes_a_voter() {
    let mut cluster = Cluster::new(&[1, 2, 3], 9);
    cluster.bootstrap(1, &[1]);
    cluster.elect(&[1]);
    for i in 0..10 {
        cluster.propose(1, format!("v{i}").as_bytes());
    }
    cluster.settle();
    let expected = cluster.values(1, 1);
    let leader = cluster.node(1);
    leader
        .driver
        .propose_conf_change(1, &[(ConfChangeKind::AddLearner, 2)])
        .unwrap();
    // A second change must wait until the first is applied.
    assert!(matches!(
        leader
            .driver
            .propose_conf_change(1, &[(ConfChangeKind::AddLearner, 3)]),
        Err(Error::Invalid(_))
    ));
    cluster.settle();
    for _ in 0..5 {
        cluster.tick();
    }
    assert!(cluster
        .node(1)
        .readies
        .iter()
        .any(|r| !r.needs_snapshot.is_empty()));
    assert!(cluster
        .node(1)
        .readies
        .iter()
        .any(|r| !r.snapshots_out.is_empty()));
    assert!(cluster.node(2).readies.iter().any(|r| r.created == vec![1]));
    assert!(cluster
        .node(2)
        .readies
        .iter()
        .any(|r| !r.snapshot_installed.is_empty()));
    assert_eq!(cluster.values(2, 1), expected);
    assert_eq!(cluster.node(2).driver.status(1).unwrap().learners, vec![2]);

    cluster
        .node(1)
        .driver
        .propose_conf_change(1, &[(ConfChangeKind::AddVoter, 2)])
        .unwrap();
    cluster.settle();
    for _ in 0..3 {
        cluster.tick();
    }
    // Compact the leader's log, then a third replica needs a fresh snapshot.
    let applied = cluster.node(1).driver.status(1).unwrap().applied;
    cluster.compact(1, 1, applied);
    cluster
        .node(1)
        .driver
        .propose_conf_change(1, &[(ConfChangeKind::AddLearner, 3)])
        .unwrap();
    cluster.settle();
    for _ in 0..5 {
        cluster.tick();
    }
    cluster.propose(1, b"last");
    cluster.settle();
    for _ in 0..3 {
        cluster.tick();
    }
    let mut expected = expected;
    expected.push(b"last".to_vec());
    for id in 1..=3 {
        assert_eq!(cluster.values(id, 1), expected, "node {id}");
    }
    let status = cluster.node(2).driver.status(1).unwrap();
    assert_eq!(
        (status.voters.clone(), status.learners.clone()),
        (vec![1, 2], vec![3])
    );
    // Two changes at once go through a joint configuration that is left automatically.
    cluster
        .node(1)
        .driver
        .propose_conf_change(
            1,
            &[(ConfChangeKind::AddVoter, 3), (ConfChangeKind::Remove, 2)],
        )
        .unwrap();
    for _ in 0..10 {
        cluster.tick();
    }
    let status = cluster.node(1).driver.status(1).unwrap();
    assert_eq!(status.voters_outgoing, Vec::<u64>::new());
    assert_eq!((status.voters, status.learners), (vec![1, 3], vec![]));
}

#[test]
fn compaction_drops_the_log_below_the_applied_index() {
    let mut cluster = Cluster::new(&[1], 3);
    cluster.bootstrap(0, &[1]);
    cluster.elect(&[0]);
    for i in 0..20 {
        cluster.propose(0, format!("{i}").as_bytes());
    }
    cluster.settle();
    let status = cluster.node(1).driver.status(0).unwrap();
    let driver = &mut cluster.node(1).driver;
    assert!(matches!(
        driver.compact(0, status.applied + 1),
        Err(Error::Invalid(_))
    ));
    let writes = driver.compact(0, status.applied - 2).unwrap();
    assert!(writes.contains(&Write::Compact {
        log: "r/0".into(),
        to_index: status.applied - 2
    }));
    assert!(
        driver.compact(0, 3).unwrap().is_empty(),
        "already compacted"
    );
    for write in &writes {
        cluster.node(1).store.apply(write);
    }
    let after = cluster.node(1).driver.status(0).unwrap();
    assert_eq!(after.first_index, status.applied - 2);
    assert_eq!(cluster.node(1).store.logs["r/0"].0, status.applied - 2);
    cluster.crash(1);
    cluster.elect(&[0]);
    cluster.propose(0, b"more");
    cluster.settle();
    assert_eq!(cluster.values(1, 0).len(), 21);
}

#[test]
fn a_crash_loses_unsynced_writes_and_recovery_catches_up() {
    let mut cluster = three_nodes(21, 3);
    cluster.sync_writes = false;
    for round in 0..6 {
        for group_id in groups(3) {
            cluster.propose(group_id, format!("{round}/{group_id}").as_bytes());
        }
        cluster.settle();
        // Node 3 never syncs before it crashes; the others do.
        for id in [1, 2] {
            cluster.sync(id);
        }
        cluster.settle();
        if round == 2 {
            cluster.crash(3);
            cluster.sync_writes = true;
            cluster.elect(&groups(3));
            cluster.sync_writes = false;
        }
    }
    let leader = cluster.leader_of(0).unwrap();
    cluster.crash(leader);
    cluster.sync_writes = true;
    for id in 1..=3 {
        cluster.sync(id);
    }
    for _ in 0..60 {
        cluster.tick();
    }
    for group_id in groups(3) {
        cluster.propose(group_id, b"end");
    }
    cluster.settle();
    for _ in 0..3 {
        cluster.tick();
    }
    for group_id in groups(3) {
        let expected = cluster.values(1, group_id);
        assert_eq!(expected.len(), 7);
        for id in 2..=3 {
            assert_eq!(cluster.values(id, group_id), expected);
        }
    }
}

#[test]
fn a_follower_refuses_proposals_and_names_the_leader() {
    let mut cluster = three_nodes(2, 1);
    let leader = cluster.leader_of(0).unwrap();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let driver = &mut cluster.node(follower).driver;
    assert_eq!(
        driver.propose(0, b"x"),
        Err(Error::NotLeader { leader_id: leader })
    );
    assert_eq!(
        driver.read_index(0, b"r"),
        Err(Error::NotLeader { leader_id: leader })
    );
    assert!(matches!(driver.propose(9, b"x"), Err(Error::Invalid(_))));
}

#[test]
fn read_index_answers_on_the_leader() {
    let mut cluster = three_nodes(4, 1);
    let leader = cluster.leader_of(0).unwrap();
    cluster.node(leader).driver.read_index(0, b"ctx-1").unwrap();
    cluster.settle();
    let commit = cluster.node(leader).driver.status(0).unwrap().commit;
    let answered: Vec<_> = cluster
        .node(leader)
        .readies
        .iter()
        .flat_map(|r| r.read_states.clone())
        .collect();
    assert_eq!(answered, vec![(0, b"ctx-1".to_vec(), commit)]);
}

fn heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Vec<u8> {
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    message.from = from;
    message.to = to;
    message.term = term;
    message.commit = commit;
    let mut builder = FrameBuilder::default();
    builder.push(0, &message);
    builder.finish().remove(0)
}

#[test]
fn bad_frames_are_refused_before_anything_is_stepped() {
    let mut driver = Driver::new(Config::new(2, 1)).unwrap();
    assert!(matches!(
        driver.step(1, b"\x01garbage"),
        Err(Error::Invalid(_))
    ));
    // The sender must be who the message says.
    assert!(matches!(
        driver.step(3, &heartbeat(1, 2, 6, 0)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        driver.step(1, &heartbeat(1, 4, 6, 0)),
        Err(Error::Invalid(_))
    ));
    assert!(driver.groups().is_empty());
    // A heartbeat for an unknown group creates an empty replica.
    driver.step(1, &heartbeat(1, 2, 6, 0)).unwrap();
    assert_eq!(driver.groups(), vec![0]);
    assert_eq!(driver.ready().unwrap().created, vec![0]);
    // A response for an unknown group is dropped.
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgAppendResponse);
    message.from = 1;
    message.to = 2;
    let mut builder = FrameBuilder::default();
    builder.push(7, &message);
    driver.step(1, &builder.finish()[0]).unwrap();
    assert_eq!(driver.groups(), vec![0]);
    let snapshot = message.write_to_bytes().unwrap();
    assert!(matches!(
        driver.step_snapshot(1, 0, &snapshot, 0),
        Err(Error::Invalid(_))
    ));
    // A real MsgSnapshot is refused inside a frame, and by step_snapshot with another state's index.
    message.set_msg_type(MessageType::MsgSnapshot);
    message.mut_snapshot().mut_metadata().index = 9;
    let mut builder = FrameBuilder::default();
    builder.push(0, &message);
    assert!(matches!(
        driver.step(1, &builder.finish()[0]),
        Err(Error::Invalid(_))
    ));
    let snapshot = message.write_to_bytes().unwrap();
    assert!(matches!(
        driver.step_snapshot(1, 0, &snapshot, 8),
        Err(Error::Invalid(reason)) if reason.contains("index 9")
    ));
}

#[test]
fn a_raft_panic_poisons_the_driver() {
    let mut cluster = three_nodes(8, 1);
    let leader = cluster.leader_of(0).unwrap();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let term = cluster.node(leader).driver.status(0).unwrap().term;
    // A heartbeat that commits far past the follower's log makes raft-rs panic.
    let forged = heartbeat(leader, follower, term, 1_000_000);
    let driver = &mut cluster.node(follower).driver;
    let Err(Error::Fatal(reason)) = driver.step(leader, &forged) else {
        panic!("the forged heartbeat did not poison the driver");
    };
    assert!(reason.starts_with("group 0: "), "{reason}");
    assert!(
        reason.contains("out of range") && reason.contains("raft_log.rs:"),
        "{reason}"
    );
    assert!(matches!(driver.tick(), Err(Error::Fatal(_))));
    assert!(matches!(driver.has_ready(), Err(Error::Fatal(_))));
}

#[test]
fn recover_refuses_inconsistent_state() {
    let mut cluster = Cluster::new(&[1], 1);
    cluster.bootstrap(0, &[1]);
    cluster.elect(&[0]);
    let store = cluster.node(1).store.clone();
    let kvs: Vec<_> = store.kvs.clone().into_iter().collect();
    let mut driver = Driver::new(Config::new(1, 1)).unwrap();
    let too_far = [(0, 1_000)].into_iter().collect();
    assert!(matches!(
        driver.recover(&kvs, &store.logs, &too_far),
        Err(Error::Invalid(_))
    ));
    let mut bad = kvs.clone();
    bad.push((b"r/0/zz".to_vec(), Vec::new()));
    assert!(matches!(
        driver.recover(&bad, &store.logs, &Default::default()),
        Err(Error::Invalid(_))
    ));
    assert!(driver.groups().is_empty());
    assert_eq!(
        driver
            .recover(&kvs, &store.logs, &Default::default())
            .unwrap(),
        vec![0]
    );
}

/// Random ticks, proposals, partitions (which membership notices), fsyncs, compactions (so
/// lagging replicas need snapshots) and crashes that lose unsynced writes: replicas
/// never disagree on what they applied, and after healing they all converge.
#[test]
fn random_faults_keep_replicas_consistent() {
    use super::rng::SplitMix64;
    for seed in 0..40 {
        let mut rng = SplitMix64::new(seed);
        let mut cluster = three_nodes(seed, 3);
        cluster.sync_writes = false;
        let mut proposed = 0;
        for _ in 0..600 {
            let id = 1 + rng.next_u64() % 3;
            match rng.next_u64() % 50 {
                0..=14 => {
                    for node in cluster.nodes.values_mut() {
                        node.driver.tick().unwrap();
                    }
                }
                15..=29 => {
                    let group_id = rng.next_u64() % 3;
                    if let Some(leader) = cluster.leader_of(group_id) {
                        let data = format!("{proposed}");
                        if cluster
                            .node(leader)
                            .driver
                            .propose(group_id, data.as_bytes())
                            .is_ok()
                        {
                            proposed += 1;
                        }
                    }
                }
                30..=45 => cluster.sync(id),
                46..=47 => {
                    if cluster.cut.contains(&id) {
                        cluster.rejoin(id);
                    } else if cluster.cut.is_empty() {
                        cluster.isolate(id);
                    }
                }
                48 => {
                    let group_id = rng.next_u64() % 3;
                    let applied = cluster.node(id).driver.status(group_id).unwrap().applied;
                    cluster.compact(id, group_id, applied);
                }
                _ => cluster.crash(id),
            }
            cluster.settle();
            for group_id in 0..3 {
                let mut logs: Vec<_> = (1..=3).map(|id| cluster.values(id, group_id)).collect();
                logs.sort_by_key(Vec::len);
                for shorter in &logs[..2] {
                    assert!(
                        logs[2].starts_with(shorter),
                        "seed {seed}: replicas diverged"
                    );
                }
            }
        }
        for id in cluster.cut.clone() {
            cluster.rejoin(id);
        }
        cluster.sync_writes = true;
        for id in 1..=3 {
            cluster.sync(id);
        }
        for _ in 0..60 {
            cluster.tick();
        }
        for group_id in 0..3 {
            cluster.propose(group_id, b"final");
        }
        cluster.settle();
        for _ in 0..3 {
            cluster.tick();
        }
        for group_id in 0..3 {
            let expected = cluster.values(1, group_id);
            assert_eq!(expected.last().map(Vec::as_slice), Some(&b"final"[..]));
            for id in 2..=3 {
                assert_eq!(cluster.values(id, group_id), expected, "seed {seed}");
            }
        }
    }
}
