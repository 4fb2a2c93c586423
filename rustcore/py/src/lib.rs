//! `pyagent._core`: the Python face of `pyagent-core`. Conversions and error mapping only; the logic
//! and its tests live in the pure crate.
use pyagent_core::{hashing, msgpack_shape, pnet};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Above this size the keystream is applied with the GIL released, so other Python threads run
/// meanwhile; below it, releasing and re-taking the GIL would cost more than the XOR itself.
const DETACH_THRESHOLD_BYTES: usize = 64 * 1024;

fn fixed_bytes<const N: usize>(what: &str, data: &[u8]) -> PyResult<[u8; N]> {
    <[u8; N]>::try_from(data)
        .map_err(|_| PyValueError::new_err(format!("{what} must be {N} bytes, got {}", data.len())))
}

/// XSalsa20 keystream for one direction of a private-network connection. `apply` advances the
/// keystream position, so feed each direction's bytes to its own instance, once and in order.
#[pyclass(module = "pyagent._core")]
struct XSalsa20 {
    cipher: pnet::PnetCipher,
}

#[pymethods]
impl XSalsa20 {
    #[new]
    fn new(key: &[u8], nonce: &[u8]) -> PyResult<Self> {
        let key = fixed_bytes::<{ pnet::KEY_LEN_BYTES }>("key", key)?;
        let nonce = fixed_bytes::<{ pnet::NONCE_LEN_BYTES }>("nonce", nonce)?;
        Ok(Self {
            cipher: pnet::PnetCipher::new(&key, &nonce),
        })
    }

    /// Return `data` XORed with the next `len(data)` keystream bytes (encrypts and decrypts alike).
    fn apply<'py>(&mut self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        let mut buffer = data.to_vec();
        if buffer.len() >= DETACH_THRESHOLD_BYTES {
            let cipher = &mut self.cipher;
            py.detach(|| cipher.apply_keystream(&mut buffer));
        } else {
            self.cipher.apply_keystream(&mut buffer);
        }
        PyBytes::new(py, &buffer)
    }
}

/// Parse the text of a `swarm.key` file into the 32-byte key; ValueError says what is wrong.
#[pyfunction]
fn parse_swarm_key<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let key =
        pnet::parse_swarm_key(text).map_err(|error| PyValueError::new_err(error.to_string()))?;
    Ok(PyBytes::new(py, &key))
}

/// The `swarm.key` text (base16 form) for a 32-byte key.
#[pyfunction]
fn format_swarm_key(key: &[u8]) -> PyResult<String> {
    Ok(pnet::format_swarm_key(&fixed_bytes("key", key)?))
}

/// The go/rust-libp2p compatible fingerprint of a 32-byte key (32 hex characters, not secret).
#[pyfunction]
fn key_fingerprint(key: &[u8]) -> PyResult<String> {
    Ok(pnet::key_fingerprint(&fixed_bytes("key", key)?))
}

/// Check a msgpack frame body before it is decoded: exactly one value, no ext types, containers at
/// most `depth_max` deep, at most `count_max` values. ValueError says what is wrong.
///
/// The body is borrowed, not copied, and the GIL stays held: the scan looks at no more than
/// `count_max` values, a few nanoseconds each, which is short next to the decoding that follows it.
#[pyfunction]
fn check_msgpack_shape(body: &[u8], depth_max: usize, count_max: usize) -> PyResult<()> {
    msgpack_shape::check_shape(body, depth_max, count_max)
        .map_err(|error| PyValueError::new_err(error.to_string()))
}

/// The BLAKE3 hash of `data` (32 bytes). Large inputs are hashed with the GIL released.
#[pyfunction]
fn blake3<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    let digest = if data.len() >= DETACH_THRESHOLD_BYTES {
        py.detach(|| hashing::digest(data))
    } else {
        hashing::digest(data)
    };
    PyBytes::new(py, &digest)
}

/// The BLAKE3 hashes of `data` cut into pieces of `chunk_size_bytes` (the last may be shorter),
/// concatenated: 32 bytes per piece. Hashed with the GIL released; ValueError for a size of 0.
#[pyfunction]
fn blake3_chunks<'py>(
    py: Python<'py>,
    data: &[u8],
    chunk_size_bytes: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    if chunk_size_bytes == 0 {
        return Err(PyValueError::new_err("chunk_size_bytes must be positive"));
    }
    let hashes = py.detach(|| hashing::chunk_digests(data, chunk_size_bytes));
    Ok(PyBytes::new(py, &hashes))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KEY_LEN_BYTES", pnet::KEY_LEN_BYTES)?;
    m.add("NONCE_LEN_BYTES", pnet::NONCE_LEN_BYTES)?;
    m.add_class::<XSalsa20>()?;
    m.add_function(wrap_pyfunction!(parse_swarm_key, m)?)?;
    m.add_function(wrap_pyfunction!(format_swarm_key, m)?)?;
    m.add_function(wrap_pyfunction!(key_fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(check_msgpack_shape, m)?)?;
    m.add("BLAKE3_LEN_BYTES", hashing::DIGEST_LEN_BYTES)?;
    m.add_function(wrap_pyfunction!(blake3, m)?)?;
    m.add_function(wrap_pyfunction!(blake3_chunks, m)?)?;
    Ok(())
}
