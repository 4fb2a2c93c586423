//! The wire frame that carries every raft message one node sends another in one ready.
//!
//! Many groups share a peer, so their messages share a frame: one frame per destination per
//! ready instead of one per group, which is what keeps thousands of idle groups cheap.
//!
//! Layout: `version: u8`, `count: varint`, then `count` times `group_id: varint`,
//! `length: varint`, `length` bytes of a raft `Message` protobuf. Varints are unsigned LEB128.
//! Nothing may follow the last message.

use std::fmt;

use protobuf::Message as _;
use raft::eraftpb::Message;

pub const FRAME_VERSION: u8 = 1;
/// A frame larger than this is refused before it is parsed.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// One message larger than this is refused; proposals and `max_size_per_msg` are bounded so
/// that an honest leader never builds one.
pub const MESSAGE_BYTES_MAX: usize = 32 << 20;
pub const MESSAGE_COUNT_MAX: usize = 65_536;
/// A u64 in LEB128 takes at most 10 bytes.
const VARINT_BYTES_MAX: usize = 10;

/// Why a frame was refused. The sender is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad raft frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

fn bad(reason: impl Into<String>) -> FrameError {
    FrameError(reason.into())
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A reader over the frame that never reads past its end.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, FrameError> {
        let byte = *self.data.get(self.pos).ok_or_else(|| bad("truncated"))?;
        self.pos += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut value = 0u64;
        for i in 0..VARINT_BYTES_MAX {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == VARINT_BYTES_MAX - 1 && bits > 1 {
                return Err(bad("varint overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                // A zero continuation byte would let one value have many spellings.
                if i > 0 && byte == 0 {
                    return Err(bad("overlong varint"));
                }
                return Ok(value);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(len).ok_or_else(|| bad("truncated"))?;
        let slice = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated"))?;
        self.pos = end;
        Ok(slice)
    }
}

/// Builds the frames for one destination, starting a new frame when a limit would be crossed
/// (only a flood of messages to one peer gets there).
#[derive(Default)]
pub struct FrameBuilder {
    frames: Vec<Vec<u8>>,
    body: Vec<u8>,
    count: usize,
}

/// Room for the version byte and the count varint in front of the body.
const HEADER_BYTES_MAX: usize = 1 + VARINT_BYTES_MAX;

impl FrameBuilder {
    /// Add one message. Panics if it alone exceeds [`MESSAGE_BYTES_MAX`]: the driver bounds
    /// what it lets into a message, so that would be a broken invariant.
    pub fn push(&mut self, group_id: u64, message: &Message) {
        let bytes = message
            .write_to_bytes()
            .expect("a raft message always encodes");
        assert!(
            bytes.len() <= MESSAGE_BYTES_MAX,
            "a raft message of {} bytes exceeds {MESSAGE_BYTES_MAX}",
            bytes.len()
        );
        let entry_bytes = 2 * VARINT_BYTES_MAX + bytes.len();
        if self.count == MESSAGE_COUNT_MAX
            || HEADER_BYTES_MAX + self.body.len() + entry_bytes > FRAME_BYTES_MAX
        {
            self.finish_frame();
        }
        put_varint(&mut self.body, group_id);
        put_varint(&mut self.body, bytes.len() as u64);
        self.body.extend_from_slice(&bytes);
        self.count += 1;
    }

    fn finish_frame(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut frame = Vec::with_capacity(HEADER_BYTES_MAX + self.body.len());
        frame.push(FRAME_VERSION);
        put_varint(&mut frame, self.count as u64);
        frame.append(&mut self.body);
        self.frames.push(frame);
        self.count = 0;
    }

    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.finish_frame();
        self.frames
    }
}

/// Decode a whole frame into `(group_id, message)` pairs, refusing group ids at or above
/// `group_id_max`. Either every message decodes or none is returned.
pub fn decode(frame: &[u8], group_id_max: u64) -> Result<Vec<(u64, Message)>, FrameError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(bad(format!(
            "{} bytes (max {FRAME_BYTES_MAX})",
            frame.len()
        )));
    }
    let mut cursor = Cursor {
        data: frame,
        pos: 0,
    };
    let version = cursor.byte()?;
    if version != FRAME_VERSION {
        return Err(bad(format!("version {version} (expected {FRAME_VERSION})")));
    }
    let count = cursor.varint()?;
    if count == 0 || count > MESSAGE_COUNT_MAX as u64 {
        return Err(bad(format!("{count} messages (1 to {MESSAGE_COUNT_MAX})")));
    }
    let mut messages = Vec::new();
    for _ in 0..count {
        let group_id = cursor.varint()?;
        if group_id >= group_id_max {
            return Err(bad(format!(
                "group id {group_id} (max {})",
                group_id_max - 1
            )));
        }
        let len = cursor.varint()?;
        if len > MESSAGE_BYTES_MAX as u64 {
            return Err(bad(format!(
                "a message of {len} bytes (max {MESSAGE_BYTES_MAX})"
            )));
        }
        let body = cursor.bytes(len as usize)?;
        let message = Message::parse_from_bytes(body)
            .map_err(|error| bad(format!("undecodable message: {error}")))?;
        messages.push((group_id, message));
    }
    if cursor.pos != frame.len() {
        return Err(bad("bytes after the last message"));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiraft::rng::SplitMix64;
    use raft::eraftpb::{Entry, MessageType};

    fn sample(group_id: u64, index: u64) -> (u64, Message) {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        message.from = 1;
        message.term = 7;
        message.index = index;
        let entry = Entry {
            index: index + 1,
            data: vec![group_id as u8; 40].into(),
            ..Default::default()
        };
        message.set_entries(vec![entry].into());
        (group_id, message)
    }

    fn encode(messages: &[(u64, Message)]) -> Vec<Vec<u8>> {
        let mut builder = FrameBuilder::default();
        for (group_id, message) in messages {
            builder.push(*group_id, message);
        }
        builder.finish()
    }

    #[test]
    fn round_trip() {
        let messages: Vec<_> = (0..50).map(|g| sample(g * 997, g)).collect();
        let frames = encode(&messages);
        assert_eq!(frames.len(), 1);
        assert_eq!(decode(&frames[0], 1 << 20).unwrap(), messages);
    }

    #[test]
    fn no_messages_no_frame() {
        assert!(FrameBuilder::default().finish().is_empty());
    }

    #[test]
    fn refuses_what_breaks_a_limit() {
        let frame = encode(&[sample(5, 1)]).remove(0);
        assert!(decode(&frame, 5).unwrap_err().0.contains("group id"));
        let mut wrong_version = frame.clone();
        wrong_version[0] = 2;
        assert!(decode(&wrong_version, 10).is_err());
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(decode(&trailing, 10).is_err());
        assert!(decode(&[FRAME_VERSION, 0], 10).is_err());
        let mut too_many = vec![FRAME_VERSION];
        put_varint(&mut too_many, MESSAGE_COUNT_MAX as u64 + 1);
        assert!(decode(&too_many, 10).unwrap_err().0.contains("messages"));
        let mut too_long = vec![FRAME_VERSION, 1, 0];
        put_varint(&mut too_long, MESSAGE_BYTES_MAX as u64 + 1);
        assert!(decode(&too_long, 10).unwrap_err().0.contains("bytes"));
        assert!(decode(&[FRAME_VERSION, 0x81, 0x00], 10)
            .unwrap_err()
            .0
            .contains("overlong"));
        let overflow = [
            FRAME_VERSION,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x02,
        ];
        assert!(decode(&overflow, 10).unwrap_err().0.contains("overflow"));
    }

    /// Random bytes, every truncation and random mutations of a valid frame: the decoder only
    /// ever returns errors or messages, never panics, and never reads past the end.
    #[test]
    fn garbage_never_panics() {
        let mut rng = SplitMix64::new(0x5eed);
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 200) as usize;
            let mut garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if rng.next_u64() % 2 == 0 && !garbage.is_empty() {
                garbage[0] = FRAME_VERSION;
            }
            let _ = decode(&garbage, 1 << 20);
        }
        let messages: Vec<_> = (0..8).map(|g| sample(g, g + 3)).collect();
        let frame = encode(&messages).remove(0);
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        for _ in 0..20_000 {
            let mut mutated = frame.clone();
            for _ in 0..1 + rng.next_u64() % 4 {
                let at = (rng.next_u64() as usize) % mutated.len();
                mutated[at] = rng.next_u64() as u8;
            }
            if let Ok(decoded) = decode(&mutated, 1 << 20) {
                assert!(decoded.len() <= MESSAGE_COUNT_MAX);
            }
        }
    }
}
