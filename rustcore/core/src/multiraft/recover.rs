//! Rebuild each group's storage from what the driver wrote before a restart.
//!
//! Everything comes from the caller's store, which a crash or a bug may have left in any
//! state, so each value is size-checked and decoded carefully, and a group whose parts do not
//! fit together is refused here rather than left to panic inside raft-rs.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfState, Entry, HardState};

use super::keys::{self, KeyKind};
use super::{invalid, Error, Result};

/// A hard state or conf state larger than this is not one the driver wrote.
const STATE_BYTES_MAX: usize = 1 << 20;
/// The store's own bound on a value or log entry.
const ENTRY_BYTES_MAX: usize = 64 << 20;

#[derive(Default)]
pub struct Recovered {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub truncated: (u64, u64),
    pub entries: Vec<Entry>,
}

impl Recovered {
    pub fn last_index(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }
}

fn decode<M: protobuf::Message>(what: &str, group_id: u64, bytes: &[u8], max: usize) -> Result<M> {
    if bytes.len() > max {
        return invalid(format!("group {group_id}: {what} of {} bytes", bytes.len()));
    }
    M::parse_from_bytes(bytes)
        .map_err(|error| Error::Invalid(format!("group {group_id}: bad {what}: {error}")))
}

/// `kvs`: every key/value under [`keys::KEY_PREFIX`]; `logs`: log name -> (first index,
/// entries) for every log under [`keys::LOG_PREFIX`].
pub fn parse(
    kvs: &[(Vec<u8>, Vec<u8>)],
    logs: &BTreeMap<String, (u64, Vec<Vec<u8>>)>,
    group_id_max: u64,
) -> Result<BTreeMap<u64, Recovered>> {
    let mut groups: BTreeMap<u64, Recovered> = BTreeMap::new();
    let check_id = |group_id: u64| {
        if group_id >= group_id_max {
            return invalid(format!("group id {group_id} (max {})", group_id_max - 1));
        }
        Ok(group_id)
    };
    for (key, value) in kvs {
        let Some((group_id, kind)) = keys::parse_key(key) else {
            return invalid(format!(
                "unknown raft key {:?}",
                String::from_utf8_lossy(key)
            ));
        };
        let group = groups.entry(check_id(group_id)?).or_default();
        match kind {
            KeyKind::HardState => {
                group.hard_state = decode("hard state", group_id, value, STATE_BYTES_MAX)?
            }
            KeyKind::ConfState => {
                group.conf_state = decode("conf state", group_id, value, STATE_BYTES_MAX)?
            }
            KeyKind::Truncated => {
                group.truncated = keys::decode_truncated(value).ok_or_else(|| {
                    Error::Invalid(format!("group {group_id}: bad truncated state"))
                })?
            }
        }
    }
    for (name, (first_index, entries)) in logs {
        let Some(group_id) = keys::parse_log_name(name) else {
            return invalid(format!("unknown raft log {name:?}"));
        };
        let group = groups.entry(check_id(group_id)?).or_default();
        for (i, bytes) in entries.iter().enumerate() {
            let entry: Entry = decode("log entry", group_id, bytes, ENTRY_BYTES_MAX)?;
            if Some(entry.index) != first_index.checked_add(i as u64) {
                return invalid(format!(
                    "group {group_id}: entry {} stored at index {}",
                    entry.index,
                    first_index.saturating_add(i as u64)
                ));
            }
            group.entries.push(entry);
        }
    }
    for (group_id, group) in &mut groups {
        // Entries a snapshot already covers are harmless leftovers; a gap is not.
        let truncated = group.truncated.0;
        group.entries.retain(|entry| entry.index > truncated);
        if let Some(first) = group.entries.first() {
            if first.index != truncated + 1 {
                return invalid(format!(
                    "group {group_id}: log starts at {} but its snapshot is at {truncated}",
                    first.index
                ));
            }
        }
        let commit = group.hard_state.commit;
        if commit < truncated || commit > group.last_index() {
            return invalid(format!(
                "group {group_id}: commit {commit} outside the log {truncated}..={}",
                group.last_index()
            ));
        }
    }
    Ok(groups)
}
