//! `pyagent._core`: the Python face of `pyagent-core`. Conversions and error mapping only; the logic
//! and its tests live in the pure crate.
use std::sync::{Arc, RwLock};

mod lora;
mod multiraft;

use pyagent_core::{hashing, msgpack_shape, pnet, storage};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

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

/// The BLAKE3 hash of `data` (32 bytes): bytes, or any C-contiguous byte buffer, such as a
/// memoryview of part of a frame (hashed where it lies, not copied). Large inputs are hashed with
/// the GIL released; meanwhile the caller must not write `data` from another thread.
#[pyfunction]
fn blake3<'py>(py: Python<'py>, data: PyBuffer<u8>) -> PyResult<Bound<'py, PyBytes>> {
    if !data.is_c_contiguous() {
        return Err(PyValueError::new_err("data must be C-contiguous"));
    }
    // SAFETY: the buffer is a contiguous, initialized run of `item_count` bytes that stays alive
    // (and, by the contract above, unchanged) while `data` is held.
    let bytes =
        unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.item_count()) };
    let digest = if bytes.len() >= DETACH_THRESHOLD_BYTES {
        py.detach(|| hashing::digest(bytes))
    } else {
        hashing::digest(bytes)
    };
    Ok(PyBytes::new(py, &digest))
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

pyo3::create_exception!(
    pyagent._core,
    StorageError,
    pyo3::exceptions::PyOSError,
    "The store's disk or engine failed; the store refuses every later call (restart to recover)."
);

/// Above this many log entries a read releases the GIL: entries are read from files.
const DETACH_ENTRIES_MIN: u64 = 16;

fn storage_error(error: storage::StoreError) -> PyErr {
    match error {
        storage::StoreError::Invalid(message) => PyValueError::new_err(message),
        storage::StoreError::OutOfRange(message) => PyIndexError::new_err(message),
        error @ storage::StoreError::Engine(_) => StorageError::new_err(error.to_string()),
    }
}

fn bytes_at(op: &Bound<'_, PyTuple>, index: usize) -> PyResult<Vec<u8>> {
    Ok(op.get_item(index)?.cast::<PyBytes>()?.as_bytes().to_vec())
}

/// One op as `pyagent.node.storage` encodes it: `(code, ...)`, the codes in `_core.pyi`.
fn extract_op(op: &Bound<'_, PyAny>) -> PyResult<storage::Op> {
    let op = op.cast::<PyTuple>()?;
    let code: u8 = op.get_item(0)?.extract()?;
    Ok(match code {
        0 => storage::Op::Put {
            key: bytes_at(op, 1)?,
            value: bytes_at(op, 2)?,
        },
        1 => storage::Op::Delete {
            key: bytes_at(op, 1)?,
        },
        2 => storage::Op::DeleteRange {
            start: bytes_at(op, 1)?,
            end: bytes_at(op, 2)?,
        },
        3 => {
            let mut entries = Vec::new();
            for entry in op.get_item(3)?.try_iter()? {
                entries.push(entry?.cast::<PyBytes>()?.as_bytes().to_vec());
            }
            storage::Op::LogAppend {
                log: op.get_item(1)?.extract()?,
                first_index: op.get_item(2)?.extract()?,
                entries,
            }
        }
        4 => storage::Op::LogTruncate {
            log: op.get_item(1)?.extract()?,
            from_index: op.get_item(2)?.extract()?,
        },
        5 => storage::Op::LogCompact {
            log: op.get_item(1)?.extract()?,
            to_index: op.get_item(2)?.extract()?,
        },
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown storage op code {code}"
            )))
        }
    })
}

/// The durable store of `pyagent.node.storage.StorageHandle` (raft-engine). Calls may come from
/// several threads; writes are serialized inside, and run with the GIL released.
#[pyclass(module = "pyagent._core", frozen)]
struct Store {
    // None once closed; a call in flight keeps its own reference, so closing never pulls the
    // engine from under it (the engine closes when the last call returns).
    inner: RwLock<Option<Arc<storage::Store>>>,
}

impl Store {
    fn store(&self) -> PyResult<Arc<storage::Store>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .clone()
            .ok_or_else(|| StorageError::new_err("the store is closed"))
    }
}

#[pymethods]
impl Store {
    #[new]
    fn new(py: Python<'_>, path: &str) -> PyResult<Self> {
        let store = py
            .detach(|| storage::Store::open(path))
            .map_err(storage_error)?;
        Ok(Self {
            inner: RwLock::new(Some(Arc::new(store))),
        })
    }

    fn close(&self) {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn is_empty(&self) -> PyResult<bool> {
        Ok(self.store()?.is_empty())
    }

    /// `(writes, syncs, bytes)` since the store was opened.
    fn stats(&self) -> PyResult<(u64, u64, u64)> {
        let stats = self.store()?.stats();
        Ok((stats.writes, stats.syncs, stats.bytes))
    }

    fn write(&self, py: Python<'_>, batches: &Bound<'_, PyAny>, sync: bool) -> PyResult<usize> {
        let store = self.store()?;
        let mut specs = Vec::new();
        for batch in batches.try_iter()? {
            let batch = batch?;
            let batch = batch.cast::<PyTuple>()?;
            let mut ops = Vec::new();
            for op in batch.get_item(1)?.try_iter()? {
                ops.push(extract_op(&op?)?);
            }
            specs.push(storage::BatchSpec {
                component: batch.get_item(0)?.extract()?,
                ops,
            });
        }
        py.detach(|| store.write(&specs, sync))
            .map_err(storage_error)
    }

    fn get<'py>(
        &self,
        py: Python<'py>,
        component: &str,
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let value = self.store()?.get(component, key).map_err(storage_error)?;
        Ok(value.map(|value| PyBytes::new(py, &value)))
    }

    #[pyo3(signature = (component, start, end, limit))]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        component: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let pairs = self
            .store()?
            .scan(component, start, end, limit)
            .map_err(storage_error)?;
        Ok(pairs
            .into_iter()
            .map(|(key, value)| (PyBytes::new(py, &key), PyBytes::new(py, &value)))
            .collect())
    }

    fn log_bounds(&self, component: &str, log: &str) -> PyResult<Option<(u64, u64)>> {
        self.store()?
            .log_bounds(component, log)
            .map_err(storage_error)
    }

    fn log_entries<'py>(
        &self,
        py: Python<'py>,
        component: &str,
        log: &str,
        lo: u64,
        hi: u64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let store = self.store()?;
        let entries = if hi.saturating_sub(lo) >= DETACH_ENTRIES_MIN {
            py.detach(|| store.log_entries(component, log, lo, hi))
        } else {
            store.log_entries(component, log, lo, hi)
        }
        .map_err(storage_error)?;
        Ok(entries
            .iter()
            .map(|entry| PyBytes::new(py, entry))
            .collect())
    }
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
    m.add_class::<Store>()?;
    m.add("StorageError", m.py().get_type::<StorageError>())?;
    m.add("BLAKE3_LEN_BYTES", hashing::DIGEST_LEN_BYTES)?;
    m.add_function(wrap_pyfunction!(blake3, m)?)?;
    m.add_function(wrap_pyfunction!(blake3_chunks, m)?)?;
    lora::register(m)?;
    multiraft::register(m)?;
    Ok(())
}
