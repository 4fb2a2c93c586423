//! `pyagent._core.LoraCodec` and friends: the binding of `pyagent_core::lora`. Conversions and
//! error mapping only; the codecs and their tests live in the pure crate.
//!
//! Arrays come in through the buffer protocol (a C-contiguous float32 numpy array, say) and are
//! read in place, with the GIL released. While a call runs, the caller must not resize or write the
//! array from another thread: the same contract as numpy's own GIL-free routines.

use pyagent_core::lora::{
    choose, feedback::ErrorFeedback, frame, CodecError, Rounding, Spec, TopK, ValueCodec,
};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

pyo3::create_exception!(
    pyagent._core,
    LoraFrameError,
    PyValueError,
    "A LoRA frame's bytes are malformed (a peer's fault when the frame came from one)."
);

fn codec_error(error: CodecError) -> PyErr {
    match error {
        CodecError::Invalid(message) => PyValueError::new_err(message),
        error @ CodecError::Malformed(_) => LoraFrameError::new_err(error.to_string()),
    }
}

fn rounding(seed: Option<u64>) -> Rounding {
    seed.map_or(Rounding::Nearest, |seed| Rounding::Stochastic { seed })
}

/// A float32, C-contiguous buffer; `writable` also refuses read-only ones.
fn float_buffer(array: &Bound<'_, PyAny>, writable: bool) -> PyResult<PyBuffer<f32>> {
    let buffer = PyBuffer::<f32>::get(array)?;
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err("the array must be C-contiguous"));
    }
    if writable && buffer.readonly() {
        return Err(PyValueError::new_err("the output array is read-only"));
    }
    Ok(buffer)
}

fn values_of(buffer: &PyBuffer<f32>) -> &[f32] {
    // SAFETY: the buffer is a contiguous, initialized run of `item_count` f32 that stays alive
    // (and, by the module's contract, unchanged) while `buffer` is held.
    unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const f32, buffer.item_count()) }
}

fn values_of_mut(buffer: &mut PyBuffer<f32>) -> &mut [f32] {
    // SAFETY: as `values_of`, and the buffer is writable; nothing else in this call reads it.
    unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr() as *mut f32, buffer.item_count()) }
}

/// Buffers at least this large are offered transparent huge pages (numpy's own threshold).
const HUGE_PAGES_BYTES_MIN: usize = 4 << 20;

/// A new bytes object of `len` bytes, filled by `write`, which must write every byte (it is
/// handed the buffer unzeroed) or fail.
///
/// `PyBytes::new_with` zeroes the buffer first. For a large frame that zeroing is the buffer's
/// first touch, so it takes every page fault (one per 4 KiB page: a third of a 64 MiB FP16
/// encode) and then `write` fills the same bytes again. Here the buffer is first offered huge
/// pages (one fault per 2 MiB) and then written once.
fn new_bytes<'py>(
    py: Python<'py>,
    len: usize,
    write: impl FnOnce(&mut [u8]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyBytes>> {
    let size = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyValueError::new_err(format!("{len} bytes is too large a bytes object")))?;
    // SAFETY: a NULL source asks CPython for a new bytes object of `size` bytes whose contents
    // are left unset; an allocation failure returns NULL with an exception set, which
    // `from_owned_ptr_or_err` turns into the error. The object is a bytes object, so the cast holds.
    let bytes = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size),
        )?
        .cast_into_unchecked::<PyBytes>()
    };
    // SAFETY: `PyBytes_AsString` of a bytes object is its buffer of exactly `len` bytes, which
    // lives as long as `bytes`, and nothing else refers to the object yet. The buffer came from
    // CPython's allocator through an opaque call and is only written through this slice before
    // anything reads it: `write` writes every byte (its contract; `Prepared::write` is tested
    // for it against buffers of three different fillings). On an error the object is dropped
    // here, unseen by Python. So no unwritten byte is ever visible.
    let frame = unsafe {
        let buffer = pyo3::ffi::PyBytes_AsString(bytes.as_ptr()).cast::<u8>();
        std::slice::from_raw_parts_mut(buffer, len)
    };
    if len >= HUGE_PAGES_BYTES_MIN {
        advise_huge_pages(frame);
    }
    write(frame)?;
    Ok(bytes)
}

/// Ask the kernel to back the whole 2 MiB pages inside `buffer`, not yet touched, with
/// transparent huge pages (it honours this when THP is in `madvise` or `always` mode).
/// Advice only: on failure the buffer keeps its ordinary pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buffer: &mut [u8]) {
    const HUGE_PAGE_BYTES: usize = 2 << 20;
    let start = buffer.as_mut_ptr().align_offset(HUGE_PAGE_BYTES);
    let whole_pages = buffer.len().saturating_sub(start) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if whole_pages == 0 {
        return;
    }
    // SAFETY: the range is inside `buffer` and page-aligned, as `madvise` requires; the advice
    // changes how its pages are backed, never their contents.
    unsafe {
        libc::madvise(
            buffer[start..].as_mut_ptr().cast(),
            whole_pages,
            libc::MADV_HUGEPAGE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buffer: &mut [u8]) {}

/// One codec: value format, block size and, for top-k, the chunk size and values kept per chunk.
#[pyclass(module = "pyagent._core", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct LoraCodec {
    spec: Spec,
}

#[pymethods]
impl LoraCodec {
    #[new]
    #[pyo3(signature = (codec, block_size=64, chunk_size=0, k_per_chunk=0))]
    fn new(codec: &str, block_size: u32, chunk_size: u32, k_per_chunk: u32) -> PyResult<Self> {
        let Some(value_codec) = ValueCodec::from_name(codec) else {
            return Err(PyValueError::new_err(format!(
                "codec must be one of fp16, int8, int4, int2, got {codec:?}"
            )));
        };
        let top_k = (chunk_size != 0 || k_per_chunk != 0).then_some(TopK {
            chunk_size,
            k_per_chunk,
        });
        let spec = Spec {
            codec: value_codec,
            block_size,
            top_k,
        };
        spec.validate().map_err(codec_error)?;
        Ok(Self { spec })
    }

    #[getter]
    fn codec(&self) -> &'static str {
        self.spec.codec.name()
    }

    #[getter]
    fn block_size(&self) -> u32 {
        self.spec.block_size
    }

    #[getter]
    fn chunk_size(&self) -> u32 {
        self.spec.top_k.map_or(0, |t| t.chunk_size)
    }

    #[getter]
    fn k_per_chunk(&self) -> u32 {
        self.spec.top_k.map_or(0, |t| t.k_per_chunk)
    }

    /// The most bytes a frame of `numel` values takes in `ndim` dimensions.
    #[pyo3(signature = (numel, ndim=1))]
    fn frame_len_max(&self, numel: u64, ndim: usize) -> u64 {
        frame::frame_len_max(&self.spec, ndim, numel)
    }

    /// Encode a float32 array as one frame; `seed` turns on stochastic rounding.
    #[pyo3(signature = (values, seed=None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        values: &Bound<'py, PyAny>,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let buffer = float_buffer(values, false)?;
        let shape: Vec<u64> = buffer.shape().iter().map(|&d| d as u64).collect();
        let values = values_of(&buffer);
        let spec = self.spec;
        let prepared = py
            .detach(|| frame::prepare(values, &shape, &spec, rounding(seed)))
            .map_err(codec_error)?;
        // Written in place: copying from a Rust buffer faulted in and filled a second buffer of
        // the frame's size (half the delta's, for FP16), which cost about as much as encoding.
        new_bytes(py, prepared.frame_len(), |frame| {
            py.detach(|| prepared.write(frame)).map_err(codec_error)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "LoraCodec({:?}, block_size={}, chunk_size={}, k_per_chunk={})",
            self.codec(),
            self.block_size(),
            self.chunk_size(),
            self.k_per_chunk()
        )
    }
}

/// Check a frame's header and return its codec and shape, refusing more than `numel_max` values.
/// The hash is left to `lora_decode_into`, so a dense frame is read once.
#[pyfunction]
fn lora_frame_info<'py>(
    py: Python<'py>,
    frame_bytes: &[u8],
    numel_max: u64,
) -> PyResult<(LoraCodec, Bound<'py, PyTuple>)> {
    let header = py
        .detach(|| frame::peek_header(frame_bytes, numel_max))
        .map_err(codec_error)?;
    Ok((
        LoraCodec { spec: header.spec },
        PyTuple::new(py, header.shape)?,
    ))
}

/// Decode a frame into `out`, a writable float32 array of exactly the frame's number of values.
/// On `LoraFrameError` `out` may have been written all the same (a dense FP16 frame is checked
/// against its hash while it is decoded): its values are then meaningless.
#[pyfunction]
fn lora_decode_into(
    py: Python<'_>,
    frame_bytes: &[u8],
    out: &Bound<'_, PyAny>,
) -> PyResult<LoraCodec> {
    let mut buffer = float_buffer(out, true)?;
    let out = values_of_mut(&mut buffer);
    let header = py
        .detach(|| frame::decode_into(frame_bytes, out))
        .map_err(codec_error)?;
    Ok(LoraCodec { spec: header.spec })
}

/// The most precise codec whose frame of `numel` values moves in `round_budget_s` at
/// `bandwidth_bytes_per_s`; the smallest one when none does.
#[pyfunction]
fn lora_choose_codec(bandwidth_bytes_per_s: f64, numel: u64, round_budget_s: f64) -> LoraCodec {
    LoraCodec {
        spec: choose::choose(bandwidth_bytes_per_s, numel, round_budget_s),
    }
}

/// The residual of error feedback toward one destination: what earlier frames did not carry.
#[pyclass(module = "pyagent._core", name = "LoraErrorFeedback")]
pub struct LoraErrorFeedback {
    inner: ErrorFeedback,
}

#[pymethods]
impl LoraErrorFeedback {
    #[new]
    fn new(shape: Vec<u64>) -> PyResult<Self> {
        Ok(Self {
            inner: ErrorFeedback::new(&shape).map_err(codec_error)?,
        })
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.shape())
    }

    /// Encode `delta` plus the residual with `codec`; keep what the frame does not carry.
    #[pyo3(signature = (codec, delta, seed=None))]
    fn encode<'py>(
        &mut self,
        py: Python<'py>,
        codec: &LoraCodec,
        delta: &Bound<'py, PyAny>,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let buffer = float_buffer(delta, false)?;
        let delta = values_of(&buffer);
        let spec = codec.spec;
        let inner = &mut self.inner;
        let encoded = py
            .detach(|| inner.encode(delta, &spec, rounding(seed)))
            .map_err(codec_error)?;
        Ok(PyBytes::new(py, &encoded))
    }

    /// Copy the residual into `out`, a writable float32 array of the same number of values.
    fn residual_into(&self, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut buffer = float_buffer(out, true)?;
        let out = values_of_mut(&mut buffer);
        let residual = self.inner.residual();
        if out.len() != residual.len() {
            return Err(PyValueError::new_err(format!(
                "out has {} values, the residual {}",
                out.len(),
                residual.len()
            )));
        }
        out.copy_from_slice(residual);
        Ok(())
    }

    /// Forget what was not sent.
    fn reset(&mut self) {
        self.inner.reset();
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoraCodec>()?;
    m.add_class::<LoraErrorFeedback>()?;
    m.add("LoraFrameError", m.py().get_type::<LoraFrameError>())?;
    m.add_function(wrap_pyfunction!(lora_frame_info, m)?)?;
    m.add_function(wrap_pyfunction!(lora_decode_into, m)?)?;
    m.add_function(wrap_pyfunction!(lora_choose_codec, m)?)?;
    Ok(())
}
