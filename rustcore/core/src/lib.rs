//! PyAgent's pure Rust core. It knows nothing of Python; `rustcore/py` only converts.
//!
//! Modules:
//! - [`hashing`]: BLAKE3 digests of transfer chunks and blobs (a hash list).
//! - [`lora`]: LoRA delta codecs: blockwise quantization, chunk-wise top-k, error feedback, frames.
//! - [`multiraft`]: a sans-I/O multi-Raft driver on raft-rs: many groups, one write batch and one
//!   frame per peer per ready.
//! - [`pnet`]: libp2p private networks (pre-shared key, XSalsa20), spec PSK v1.
//! - [`storage`]: durable logs and key spaces per component on raft-engine, written in atomic batches.

pub mod hashing;
pub mod lora;
pub mod msgpack_shape;
pub mod multiraft;
pub mod pnet;
pub mod storage;
