//! The FP16 value codec: each value as an IEEE half, little-endian, rounded to nearest even.
//!
//! Where the CPU has F16C (and AVX2, for the range check alongside), whole vectors of 8 values
//! convert in one instruction each, inline; elsewhere `half`'s slice conversion does the work.
//! Both round to nearest even, as numpy does, so a frame's bytes do not depend on the CPU.

use std::ops::Range;

use half::slice::HalfFloatSliceExt;

use super::{malformed, quant, stream, CodecError};

/// Largest finite half: FP16 cannot carry a larger magnitude.
const FP16_MAX: f32 = 65504.0;
/// An FP16 value with all exponent bits set is an infinity or a NaN.
const FP16_EXPONENT_BITS: u16 = 0x7c00;
/// Values converted per step of the portable path (through a buffer of halves on the stack) and
/// per piece of a decoded output.
const RUN: usize = 4096;

/// Write `values` as halves to `out` (two bytes each), or refuse values FP16 cannot carry.
pub(super) fn encode(values: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
    assert_eq!(out.len(), 2 * values.len());
    #[cfg(target_arch = "x86_64")]
    let largest = if has_f16c() {
        // SAFETY: the CPU has AVX2 and F16C, checked just above.
        unsafe { narrow_f16c(values, out) }
    } else {
        narrow_portable(values, out)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let largest = narrow_portable(values, out);
    let absmax = quant::checked_magnitude(largest)?;
    if absmax > FP16_MAX {
        return Err(CodecError::Invalid(format!(
            "fp16 carries magnitudes up to {FP16_MAX}, got {absmax}: use an integer codec (scaled)"
        )));
    }
    Ok(())
}

/// Read `out.len()` halves from `bytes`; a NaN or an infinity is malformed.
pub(super) fn decode(bytes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    decode_following(bytes, out, |_| {})
}

/// [`decode`], telling `reading` the range of `bytes` each piece is about to read. The pieces
/// come in order and cover `bytes`, so a caller can work on each while it is in the cache.
/// Every value is written, even after a NaN or an infinity.
pub(super) fn decode_following(
    bytes: &[u8],
    out: &mut [f32],
    mut reading: impl FnMut(Range<usize>),
) -> Result<(), CodecError> {
    assert_eq!(bytes.len(), 2 * out.len());
    #[cfg(target_arch = "x86_64")]
    let f16c = has_f16c();
    let mut non_finite = false;
    stream::fill_in_pieces(out, RUN, |start, piece| {
        let range = 2 * start..2 * (start + piece.len());
        reading(range.clone());
        let bytes = &bytes[range];
        #[cfg(target_arch = "x86_64")]
        if f16c {
            // SAFETY: the CPU has AVX2 and F16C, checked before the loop.
            non_finite |= unsafe { widen_f16c(bytes, piece) };
            return Ok(());
        }
        non_finite |= widen_portable(bytes, piece);
        Ok(())
    })?;
    if non_finite {
        return malformed("fp16 value is NaN or infinite");
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
}

/// Convert `values` to halves in `out`; returns the largest magnitude's bits (a NaN's are larger
/// than any finite value's).
fn narrow_portable(values: &[f32], out: &mut [u8]) -> u32 {
    let mut halves = [half::f16::ZERO; RUN];
    let mut largest = 0;
    for (run, bytes) in values.chunks(RUN).zip(out.chunks_mut(2 * RUN)) {
        largest = largest.max(quant::largest_magnitude_bits(run));
        let halves = &mut halves[..run.len()];
        halves.convert_from_f32_slice(run);
        for (pair, half) in bytes.chunks_exact_mut(2).zip(halves.iter()) {
            pair.copy_from_slice(&half.to_bits().to_le_bytes());
        }
    }
    largest
}

/// Convert the halves of `bytes` into `out`; returns whether one was a NaN or an infinity.
fn widen_portable(bytes: &[u8], out: &mut [f32]) -> bool {
    let mut halves = [half::f16::ZERO; RUN];
    let mut non_finite = false;
    for (run, bytes) in out.chunks_mut(RUN).zip(bytes.chunks(2 * RUN)) {
        let halves = &mut halves[..run.len()];
        for (half, pair) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
            let bits = u16::from_le_bytes([pair[0], pair[1]]);
            non_finite |= bits & FP16_EXPONENT_BITS == FP16_EXPONENT_BITS;
            *half = half::f16::from_bits(bits);
        }
        halves.convert_to_f32_slice(run);
    }
    non_finite
}

/// [`narrow_portable`] with F16C: one conversion and one unsigned max per 8 values.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn narrow_f16c(values: &[f32], out: &mut [u8]) -> u32 {
    use std::arch::x86_64::{
        _mm256_and_si256, _mm256_castps_si256, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_max_epu32,
        _mm256_set1_epi32, _mm256_setzero_si256, _mm256_storeu_si256, _mm_storeu_si128,
        _MM_FROUND_TO_NEAREST_INT,
    };
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    let mut largest = _mm256_setzero_si256();
    let mut octets = values.chunks_exact(8);
    let mut sixteens = out.chunks_exact_mut(16);
    for (octet, bytes) in (&mut octets).zip(&mut sixteens) {
        let floats = _mm256_loadu_ps(octet.as_ptr());
        let bits = _mm256_and_si256(_mm256_castps_si256(floats), magnitude);
        largest = _mm256_max_epu32(largest, bits);
        // Halves are stored as the CPU holds them: little-endian, as the wire wants.
        let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(floats);
        _mm_storeu_si128(bytes.as_mut_ptr().cast(), halves);
    }
    let mut lanes = [0u32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), largest);
    let tail = narrow_portable(octets.remainder(), sixteens.into_remainder());
    lanes.into_iter().fold(tail, u32::max)
}

/// [`widen_portable`] with F16C: one conversion per 8 values.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16c(bytes: &[u8], out: &mut [f32]) -> bool {
    use std::arch::x86_64::{
        _mm256_cvtph_ps, _mm256_storeu_ps, _mm_and_si128, _mm_cmpeq_epi16, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi16, _mm_setzero_si128,
    };
    let exponent = _mm_set1_epi16(FP16_EXPONENT_BITS as i16);
    let mut non_finite = _mm_setzero_si128();
    let mut sixteens = bytes.chunks_exact(16);
    let mut octets = out.chunks_exact_mut(8);
    for (bytes, octet) in (&mut sixteens).zip(&mut octets) {
        let halves = _mm_loadu_si128(bytes.as_ptr().cast());
        let exponents = _mm_and_si128(halves, exponent);
        non_finite = _mm_or_si128(non_finite, _mm_cmpeq_epi16(exponents, exponent));
        _mm256_storeu_ps(octet.as_mut_ptr(), _mm256_cvtph_ps(halves));
    }
    let tail = widen_portable(sixteens.remainder(), octets.into_remainder());
    tail || _mm_movemask_epi8(non_finite) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edge values of the f32 to f16 conversion, each with both signs: zeros, f32 subnormals,
    /// f16 subnormals and the ties between them, ties between normal halves (to even, both
    /// ways), the largest half, and the values just below the smallest subnormal's half.
    fn edge_values() -> Vec<f32> {
        let magnitudes = [
            0.0,
            f32::from_bits(1),
            f32::MIN_POSITIVE / 2.0,
            2f32.powi(-24),
            2f32.powi(-25),
            2f32.powi(-25) * 1.000_001,
            3.0 * 2f32.powi(-25),
            5.0 * 2f32.powi(-25),
            2f32.powi(-14) - 2f32.powi(-25),
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            1.0 + 2f32.powi(-11) + 2f32.powi(-20),
            2048.0 + 1.0,
            2048.0 + 3.0,
            1.0 / 3.0,
            FP16_MAX,
            65519.0,
        ];
        let mut values: Vec<f32> = magnitudes.iter().flat_map(|&m| [m, -m]).collect();
        // And a spread of every exponent and mantissa that fits, from a fixed generator.
        let mut state = 5u64;
        values.extend((0..20_000).map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let value = f32::from_bits((state >> 32) as u32);
            if value.is_finite() && value.abs() <= FP16_MAX {
                value
            } else {
                value.to_bits() as f32 / u32::MAX as f32
            }
        }));
        values
    }

    /// The conversion done in software, one value at a time.
    fn reference_halves(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::f16::from_f32_const(v).to_bits().to_le_bytes())
            .collect()
    }

    #[test]
    fn both_paths_round_to_nearest_even_as_the_software_conversion_does() {
        let values = edge_values();
        let expected = reference_halves(&values);
        // Odd lengths, so every path also takes its tail.
        for len in [values.len(), values.len() - 3, 5] {
            let mut out = vec![0u8; 2 * len];
            let largest = narrow_portable(&values[..len], &mut out);
            assert_eq!(out, expected[..2 * len]);
            assert_eq!(largest, quant::largest_magnitude_bits(&values[..len]));
            #[cfg(target_arch = "x86_64")]
            if has_f16c() {
                out.fill(0);
                // SAFETY: the CPU has AVX2 and F16C, checked just above.
                let largest_f16c = unsafe { narrow_f16c(&values[..len], &mut out) };
                assert_eq!(out, expected[..2 * len]);
                assert_eq!(largest_f16c, largest);
            }
        }
    }

    #[test]
    fn both_paths_read_every_half_and_flag_every_nan_and_infinity() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let expected: Vec<f32> = (0..=u16::MAX)
            .map(|bits| half::f16::from_bits(bits).to_f32_const())
            .collect();
        let finite = |bits: u16| bits & FP16_EXPONENT_BITS != FP16_EXPONENT_BITS;
        let finite_len = 0x7c00;
        assert!((0..finite_len as u16).all(finite) && !finite(finite_len as u16));
        let mut out = vec![0f32; expected.len()];
        let mut check = |widen: &dyn Fn(&[u8], &mut [f32]) -> bool| {
            // All halves, then only the finite positive ones (an odd count: the tail too).
            assert!(widen(&bytes, &mut out));
            for (got, want) in out.iter().zip(&expected) {
                assert!(got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan());
            }
            let finite_out = &mut out[..finite_len - 1];
            assert!(!widen(&bytes[..2 * (finite_len - 1)], finite_out));
        };
        check(&widen_portable);
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: the CPU has AVX2 and F16C, checked just above.
            check(&|bytes, out| unsafe { widen_f16c(bytes, out) });
        }
    }

    #[test]
    fn encode_refuses_what_fp16_cannot_carry() {
        let mut out = [0u8; 18];
        assert!(encode(&[FP16_MAX; 9], &mut out).is_ok());
        let mut too_large = [1.0; 9];
        too_large[8] = 65505.0;
        assert!(
            matches!(encode(&too_large, &mut out), Err(CodecError::Invalid(m)) if m.contains("fp16 carries"))
        );
        too_large[8] = f32::NAN;
        assert!(
            matches!(encode(&too_large, &mut out), Err(CodecError::Invalid(m)) if m.contains("finite"))
        );
    }
}
