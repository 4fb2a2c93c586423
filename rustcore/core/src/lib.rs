//! PyAgent's pure Rust core. It knows nothing of Python; `rustcore/py` only converts.
//!
//! Modules:
//! - [`pnet`]: libp2p private networks (pre-shared key, XSalsa20), spec PSK v1.

pub mod msgpack_shape;
pub mod pnet;
