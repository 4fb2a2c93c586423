//! Names of what the driver persists. Every key starts with [`KEY_PREFIX`] and every log name
//! with [`LOG_PREFIX`], so the caller finds all of it with one prefix scan for `recover`.
//!
//! Per group `g` (decimal): log `r/g` holds raft `Entry` protobufs at their raft index; key
//! `r/g/hs` the `HardState`; `r/g/cs` the `ConfState` as of the caller's applied index;
//! `r/g/ts` the truncated state (index and term of the entry just below the log, 16 bytes big
//! endian), which is where the log starts after a snapshot or a compaction.

pub const KEY_PREFIX: &[u8] = b"r/";
pub const LOG_PREFIX: &str = "r/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    HardState,
    ConfState,
    Truncated,
}

impl KeyKind {
    fn suffix(self) -> &'static str {
        match self {
            KeyKind::HardState => "hs",
            KeyKind::ConfState => "cs",
            KeyKind::Truncated => "ts",
        }
    }
}

pub fn key(group_id: u64, kind: KeyKind) -> Vec<u8> {
    format!("r/{group_id}/{}", kind.suffix()).into_bytes()
}

pub fn log_name(group_id: u64) -> String {
    format!("{LOG_PREFIX}{group_id}")
}

/// A decimal group id as this module writes it: digits only, no leading zero.
fn parse_group(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

pub fn parse_key(key: &[u8]) -> Option<(u64, KeyKind)> {
    let text = std::str::from_utf8(key.strip_prefix(KEY_PREFIX)?).ok()?;
    let (group, suffix) = text.split_once('/')?;
    let kind = [KeyKind::HardState, KeyKind::ConfState, KeyKind::Truncated]
        .into_iter()
        .find(|kind| kind.suffix() == suffix)?;
    Some((parse_group(group)?, kind))
}

pub fn parse_log_name(name: &str) -> Option<u64> {
    parse_group(name.strip_prefix(LOG_PREFIX)?)
}

pub fn encode_truncated(index: u64, term: u64) -> Vec<u8> {
    let mut out = index.to_be_bytes().to_vec();
    out.extend_from_slice(&term.to_be_bytes());
    out
}

pub fn decode_truncated(value: &[u8]) -> Option<(u64, u64)> {
    let value: &[u8; 16] = value.try_into().ok()?;
    let (index, term) = value.split_at(8);
    Some((
        u64::from_be_bytes(index.try_into().ok()?),
        u64::from_be_bytes(term.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for group in [0, 7, 1 << 19] {
            for kind in [KeyKind::HardState, KeyKind::ConfState, KeyKind::Truncated] {
                assert_eq!(parse_key(&key(group, kind)), Some((group, kind)));
            }
            assert_eq!(parse_log_name(&log_name(group)), Some(group));
        }
        for bad in [
            &b"r/01/hs"[..],
            b"r//hs",
            b"r/1/xx",
            b"x/1/hs",
            b"r/1",
            b"r/-1/hs",
        ] {
            assert_eq!(parse_key(bad), None);
        }
        assert_eq!(decode_truncated(&encode_truncated(5, 6)), Some((5, 6)));
        assert_eq!(decode_truncated(&[0; 15]), None);
    }
}
