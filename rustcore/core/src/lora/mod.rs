//! LoRA delta codecs: what a peer's adapter delta becomes on the wire.
//!
//! A delta (float32 values of any shape) is optionally sparsified per chunk (top-k by magnitude,
//! [`sparse`]), its values are quantized in blocks with one scale per block ([`quant`]), and the
//! result travels as one self-describing, BLAKE3-checked [`frame`]. [`feedback::ErrorFeedback`]
//! carries what a round did not send into the next round, per destination. [`choose`] picks the
//! codec for a round from the measured bandwidth.
//!
//! Why these codecs: hivemind's blockwise 8-bit costs about 8 bits per parameter; SparseLoCo (2025)
//! shows chunk-wise top-k at 1-3% density with 2-bit values and error feedback matches full precision,
//! at well under one bit per parameter. Both are points of this one family.

/// Call a hot loop (an `#[inline(always)]` function) compiled for AVX2 when the CPU has it: the
/// baseline x86-64 build has only SSE2, and these loops run about twice as wide with AVX2. No FMA
/// is enabled, and Rust never fuses a multiply and an add by itself, so both builds produce the
/// same bytes.
macro_rules! dispatch {
    ($function:ident($($argument:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            unsafe fn wide<T>(run: impl FnOnce() -> T) -> T {
                run()
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                unsafe { wide(|| $function($($argument),*)) }
            } else {
                $function($($argument),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $function($($argument),*)
        }
    }};
}

pub mod choose;
pub mod feedback;
mod fp16;
pub mod frame;
pub mod quant;
pub mod sparse;
mod stream;

use std::fmt;

/// How each kept value is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueCodec {
    /// IEEE half precision, no scale: its exponent is its own scale.
    Fp16,
    /// Symmetric integer levels in `[-127, 127]` times the block's scale / 127.
    Int8,
    /// Symmetric integer levels in `[-7, 7]`.
    Int4,
    /// Symmetric integer levels in `[-1, 1]`: three levels in two bits, so zero stays exact.
    Int2,
}

impl ValueCodec {
    pub const ALL: [ValueCodec; 4] = [Self::Fp16, Self::Int8, Self::Int4, Self::Int2];

    /// Bits per stored value.
    pub fn bits(self) -> u32 {
        match self {
            Self::Fp16 => 16,
            Self::Int8 => 8,
            Self::Int4 => 4,
            Self::Int2 => 2,
        }
    }

    /// The largest integer level `L`: a value is stored as `q` in `[-L, L]` and read back as
    /// `q * scale / L`. None for FP16, which has no levels.
    pub fn max_level(self) -> Option<u32> {
        match self {
            Self::Fp16 => None,
            Self::Int8 => Some(127),
            Self::Int4 => Some(7),
            Self::Int2 => Some(1),
        }
    }

    /// Whether a frame of this codec carries one f32 scale per block.
    pub fn has_scales(self) -> bool {
        self.max_level().is_some()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp16 => "fp16",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
            Self::Int2 => "int2",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|codec| codec.name() == name)
    }

    fn wire_code(self) -> u8 {
        match self {
            Self::Fp16 => 0,
            Self::Int8 => 1,
            Self::Int4 => 2,
            Self::Int2 => 3,
        }
    }

    fn from_wire_code(code: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|codec| codec.wire_code() == code)
    }
}

/// Chunk-wise top-k: the `k_per_chunk` largest magnitudes of every `chunk_size` consecutive values
/// are kept (the last, shorter chunk keeps `min(k_per_chunk, its length)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopK {
    pub chunk_size: u32,
    pub k_per_chunk: u32,
}

/// How a quantized value is rounded to its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// To the nearest level: `|x - x'| <= scale / (2 L)`.
    Nearest,
    /// Up or down with probability by distance, so the expectation is `x` (`|x - x'| < scale / L`).
    /// The random draws come from `seed` and the value's index: a seed encodes the same bytes every time.
    Stochastic { seed: u64 },
}

/// Everything that decides a frame's bytes except the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub codec: ValueCodec,
    /// Values per scale, for the integer codecs (ignored by FP16 but kept in the frame); a
    /// multiple of 8.
    pub block_size: u32,
    /// None: every value is sent (dense).
    pub top_k: Option<TopK>,
}

pub const BLOCK_SIZE_MIN: u32 = 8;
pub const BLOCK_SIZE_MAX: u32 = 1 << 16;
pub const CHUNK_SIZE_MIN: u32 = 8;
pub const CHUNK_SIZE_MAX: u32 = 1 << 16;
/// Dimensions of a frame's shape.
pub const NDIM_MAX: usize = 8;
/// The most values a frame may describe, whatever a decoder's own limit (2^32: 16 GiB of float32).
pub const NUMEL_MAX: u64 = 1 << 32;

impl Spec {
    /// Check the spec's own fields (a caller's mistake, reported as [`CodecError::Invalid`]).
    pub fn validate(&self) -> Result<(), CodecError> {
        // Whole bytes of codes per block, and whole pairs of stochastic draws.
        if !(BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX).contains(&self.block_size) || self.block_size % 8 != 0
        {
            return Err(CodecError::Invalid(format!(
                "block_size must be a multiple of 8 in {BLOCK_SIZE_MIN}..={BLOCK_SIZE_MAX}, got {}",
                self.block_size
            )));
        }
        if let Some(top_k) = self.top_k {
            if !(CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&top_k.chunk_size) {
                return Err(CodecError::Invalid(format!(
                    "chunk_size must be in {CHUNK_SIZE_MIN}..={CHUNK_SIZE_MAX}, got {}",
                    top_k.chunk_size
                )));
            }
            if top_k.k_per_chunk == 0 || top_k.k_per_chunk > top_k.chunk_size {
                return Err(CodecError::Invalid(format!(
                    "k_per_chunk must be in 1..=chunk_size ({}), got {}",
                    top_k.chunk_size, top_k.k_per_chunk
                )));
            }
        }
        Ok(())
    }

    /// How many values a delta of `numel` values keeps.
    pub fn kept(&self, numel: u64) -> u64 {
        match self.top_k {
            None => numel,
            Some(top_k) => sparse::kept_count(numel, top_k),
        }
    }
}

/// Why a frame could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The caller's arguments are wrong (bad spec, non-finite values, buffer of the wrong size).
    Invalid(String),
    /// The frame's bytes are malformed: a peer's fault when the frame came from one.
    Malformed(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(message) => write!(f, "{message}"),
            Self::Malformed(message) => write!(f, "malformed LoRA frame: {message}"),
        }
    }
}

impl std::error::Error for CodecError {}

pub(crate) fn malformed<T>(message: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError::Malformed(message.into()))
}
