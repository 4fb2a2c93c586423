//! libp2p private networks, spec "Pre-shared Key Based Private Networks in libp2p" (PSK v1):
//! <https://github.com/libp2p/specs/blob/master/pnet/Private-Networks-PSK-V1.md>
//!
//! Each side sends a fresh 24-byte nonce, then XORs everything it writes with XSalsa20(key, own nonce)
//! and everything it reads with XSalsa20(key, peer's nonce). This module holds the pieces that need no
//! I/O: the `swarm.key` file format, the cipher and a key fingerprint. The connection wrapper lives in
//! the Python shell (`pyagent.node.pnet`), which owns the sockets.

use std::fmt;

use base64::Engine as _;
use salsa20::cipher::{KeyIvInit, StreamCipher};
use salsa20::{Salsa20, XSalsa20};
use sha3::digest::{ExtendableOutput, Update, XofReader};
use sha3::Shake128;

/// Length of the pre-shared key in bytes (spec: 256-bit key).
pub const KEY_LEN_BYTES: usize = 32;
/// Length of the nonce each side sends before any ciphertext (XSalsa20's extended nonce).
pub const NONCE_LEN_BYTES: usize = 24;
/// Length of [`key_fingerprint`]'s output in bytes, before hex encoding.
pub const FINGERPRINT_LEN_BYTES: usize = 16;

const HEADER: &str = "/key/swarm/psk/1.0.0/";

/// Why a `swarm.key` text was refused. Each variant names the line at fault, so a message can say how
/// to fix the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmKeyError {
    /// The first line is not `/key/swarm/psk/1.0.0/` (or the text is empty).
    BadHeader,
    /// The second line is missing or is not `/base16/`, `/base64/` or `/bin/`.
    UnknownEncoding(String),
    /// `/bin/` keys are raw bytes, which a text file cannot carry reliably; we refuse them by name.
    BinaryEncodingUnsupported,
    /// The key line is missing or does not decode to exactly 32 bytes.
    BadLength { found_bytes: usize },
    /// The key line contains characters that are not valid for its encoding.
    BadCharacters { encoding: &'static str },
}

impl fmt::Display for SwarmKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHeader => write!(f, "first line must be {HEADER}"),
            Self::UnknownEncoding(found) => {
                write!(
                    f,
                    "second line must be /base16/ or /base64/, found {found:?}"
                )
            }
            Self::BinaryEncodingUnsupported => {
                write!(
                    f,
                    "/bin/ keys are not supported; re-encode the key as /base16/"
                )
            }
            Self::BadLength { found_bytes } => {
                write!(f, "key must be {KEY_LEN_BYTES} bytes, found {found_bytes}")
            }
            Self::BadCharacters { encoding } => {
                write!(
                    f,
                    "key line contains characters that are not valid {encoding}"
                )
            }
        }
    }
}

impl std::error::Error for SwarmKeyError {}

/// Parse the text of a `swarm.key` file: header line, encoding line, key line.
///
/// CRLF line ends and surrounding whitespace on each line are tolerated because these files are
/// copied between machines by hand; anything after the key line is ignored, as go-libp2p does.
pub fn parse_swarm_key(text: &str) -> Result<[u8; KEY_LEN_BYTES], SwarmKeyError> {
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some(HEADER) {
        return Err(SwarmKeyError::BadHeader);
    }
    let encoding = lines.next().unwrap_or("");
    let key_line = lines.next().unwrap_or("");
    let decoded = match encoding {
        "/base16/" => hex::decode(key_line).map_err(|error| match error {
            hex::FromHexError::OddLength => SwarmKeyError::BadLength {
                found_bytes: key_line.len() / 2,
            },
            _ => SwarmKeyError::BadCharacters { encoding: "base16" },
        })?,
        "/base64/" => base64::engine::general_purpose::STANDARD
            .decode(key_line)
            .map_err(|_| SwarmKeyError::BadCharacters { encoding: "base64" })?,
        "/bin/" => return Err(SwarmKeyError::BinaryEncodingUnsupported),
        other => return Err(SwarmKeyError::UnknownEncoding(other.to_owned())),
    };
    <[u8; KEY_LEN_BYTES]>::try_from(decoded.as_slice()).map_err(|_| SwarmKeyError::BadLength {
        found_bytes: decoded.len(),
    })
}

/// The `swarm.key` text for `key`, in the base16 form every libp2p implementation reads.
pub fn format_swarm_key(key: &[u8; KEY_LEN_BYTES]) -> String {
    format!("{HEADER}\n/base16/\n{}\n", hex::encode(key))
}

/// A short, non-secret name for a key, so operators can compare keys in logs without revealing them.
///
/// It is the fingerprint go-libp2p and rust-libp2p print: SHAKE-128 (16 bytes) of 64 bytes of
/// Salsa20(key, nonce "finprint") keystream. Matching them lets an operator compare our logs with a
/// go or rust peer's. The key never enters the hash directly, only a keystream derived from it.
pub fn key_fingerprint(key: &[u8; KEY_LEN_BYTES]) -> String {
    let mut keystream = [0u8; 64];
    Salsa20::new(key.into(), b"finprint".into()).apply_keystream(&mut keystream);
    let mut hasher = Shake128::default();
    hasher.update(&keystream);
    let mut digest = [0u8; FINGERPRINT_LEN_BYTES];
    hasher.finalize_xof().read(&mut digest);
    hex::encode(digest)
}

/// One direction of a private-network connection: XSalsa20 keyed by the pre-shared key and the nonce
/// of the side that writes. Its keystream position advances with every byte, so one value must see
/// that direction's bytes exactly once and in order.
pub struct PnetCipher {
    inner: XSalsa20,
}

impl PnetCipher {
    pub fn new(key: &[u8; KEY_LEN_BYTES], nonce: &[u8; NONCE_LEN_BYTES]) -> Self {
        Self {
            inner: XSalsa20::new(key.into(), nonce.into()),
        }
    }

    /// XOR `data` in place with the next `data.len()` keystream bytes (encrypts and decrypts alike).
    pub fn apply_keystream(&mut self, data: &mut [u8]) {
        self.inner.apply_keystream(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // XSalsa20 vector from Go's golang.org/x/crypto/salsa20 tests (TestXSalsa20), also used by
    // RustCrypto's stream-ciphers salsa20 tests: key "this is 32-byte key for xsalsa20", nonce
    // "24-byte nonce for xsalsa", plaintext "Hello world!".
    const VECTOR_KEY: &[u8; 32] = b"this is 32-byte key for xsalsa20";
    const VECTOR_NONCE: &[u8; 24] = b"24-byte nonce for xsalsa";
    const VECTOR_CIPHERTEXT: [u8; 12] = [
        0x00, 0x2d, 0x45, 0x13, 0x84, 0x3f, 0xc2, 0x40, 0xc4, 0x01, 0xe5, 0x41,
    ];

    #[test]
    fn xsalsa20_matches_published_vector() {
        let mut data = *b"Hello world!";
        PnetCipher::new(VECTOR_KEY, VECTOR_NONCE).apply_keystream(&mut data);
        assert_eq!(data, VECTOR_CIPHERTEXT);
    }

    #[test]
    fn keystream_position_carries_across_calls() {
        let mut whole = *b"Hello world!";
        PnetCipher::new(VECTOR_KEY, VECTOR_NONCE).apply_keystream(&mut whole);
        let mut pieces = *b"Hello world!";
        let mut cipher = PnetCipher::new(VECTOR_KEY, VECTOR_NONCE);
        let (head, tail) = pieces.split_at_mut(5);
        cipher.apply_keystream(head);
        cipher.apply_keystream(tail);
        assert_eq!(pieces, whole);
    }

    #[test]
    fn fingerprint_matches_go_and_rust_libp2p() {
        // Vector from rust-libp2p transports/pnet tests, where it is "checked against go-ipfs output".
        let key = parse_swarm_key(
            "/key/swarm/psk/1.0.0/\n/base16/\n6189c5cf0b87fb800c1a9feeda73c6ab5e998db48fb9e6a978575c770ceef683",
        )
        .unwrap();
        assert_eq!(key_fingerprint(&key), "45fc986bbc9388a11d939df26f730f0c");
    }

    #[test]
    fn format_then_parse_round_trips() {
        let key: [u8; 32] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        assert_eq!(parse_swarm_key(&format_swarm_key(&key)), Ok(key));
    }

    #[test]
    fn parse_tolerates_crlf_and_trailing_whitespace() {
        let key = [0xabu8; 32];
        let text = format_swarm_key(&key).replace('\n', "  \r\n");
        assert_eq!(parse_swarm_key(&text), Ok(key));
    }

    #[test]
    fn parse_accepts_base64() {
        let key = [0x5au8; 32];
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/base64/\n{encoded}\n")),
            Ok(key)
        );
    }

    #[test]
    fn parse_errors_name_the_fault() {
        let hex64 = "00".repeat(32);
        assert_eq!(parse_swarm_key(""), Err(SwarmKeyError::BadHeader));
        assert_eq!(
            parse_swarm_key("/key/swarm/psk/2.0.0/\n/base16/\nab"),
            Err(SwarmKeyError::BadHeader)
        );
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/base32/\n{hex64}")),
            Err(SwarmKeyError::UnknownEncoding("/base32/".to_owned()))
        );
        assert_eq!(
            parse_swarm_key(HEADER),
            Err(SwarmKeyError::UnknownEncoding(String::new()))
        );
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/bin/\n{hex64}")),
            Err(SwarmKeyError::BinaryEncodingUnsupported)
        );
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/base16/\nabcd")),
            Err(SwarmKeyError::BadLength { found_bytes: 2 })
        );
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/base16/\n")),
            Err(SwarmKeyError::BadLength { found_bytes: 0 })
        );
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/base16/\n{}zz", "00".repeat(31))),
            Err(SwarmKeyError::BadCharacters { encoding: "base16" })
        );
        assert_eq!(
            parse_swarm_key(&format!("{HEADER}\n/base64/\n!!!!")),
            Err(SwarmKeyError::BadCharacters { encoding: "base64" })
        );
    }
}
