//! Blockwise quantization: one f32 scale (the block's largest magnitude) per `block_size` values,
//! then each value as a level `q` in `[-L, L]`, stored as `q + L` in `bits` bits, packed
//! little-endian (value `i` in the low bits first). FP16 stores each value as IEEE half instead.
//!
//! Layout of `n` values: `ceil(n / block_size)` scales (f32 LE; none for FP16), then the codes,
//! `ceil(n * bits / 8)` bytes, the unused high bits of the last byte zero.

use half::slice::HalfFloatSliceExt;

use super::{malformed, CodecError, Rounding, ValueCodec};

const SCALE_LEN_BYTES: usize = 4;
/// Largest finite half: FP16 cannot carry a larger magnitude.
const FP16_MAX: f32 = 65504.0;
/// An FP16 value with all exponent bits set is an infinity or a NaN.
const FP16_EXPONENT_BITS: u16 = 0x7c00;
/// Values converted to or from FP16 per call of `half`'s slice conversion.
const FP16_RUN: usize = 1024;
/// The bits of a float with its sign cleared compare as integers in the order of magnitudes, and
/// every NaN and infinity is at or above this one.
const NON_FINITE_BITS_MIN: u32 = 0x7f80_0000;

/// Bytes that `n` values take.
pub fn encoded_len(codec: ValueCodec, block_size: u32, n: usize) -> usize {
    let scales = if codec.has_scales() {
        n.div_ceil(block_size as usize) * SCALE_LEN_BYTES
    } else {
        0
    };
    scales + (n * codec.bits() as usize).div_ceil(8)
}

#[inline(always)]
fn magnitude_bits(value: f32) -> u32 {
    value.to_bits() & 0x7fff_ffff
}

/// The largest magnitude, or an error when a value is NaN or infinite (they would poison a sum).
#[inline(always)]
fn checked_absmax(values: &[f32]) -> Result<f32, CodecError> {
    let bits = values
        .iter()
        .fold(0u32, |max, &v| max.max(magnitude_bits(v)));
    if bits >= NON_FINITE_BITS_MIN {
        return Err(CodecError::Invalid(
            "values must be finite (found NaN or infinity)".into(),
        ));
    }
    Ok(f32::from_bits(bits))
}

/// Two uniform draws in [0, 1) for the values at positions `2 * pair` and `2 * pair + 1`, from
/// the seed and the pair (splitmix64's finalizer; 24 bits each from its top 48). Stateless, so
/// stochastic rounding replays for a seed; one hash per two values keeps it near 1 GB/s.
#[inline(always)]
fn uniform_pair(seed: u64, pair: u64) -> [f32; 2] {
    let mut z = seed ^ pair.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let unit = 1.0 / (1u64 << 24) as f32;
    [
        (z >> 40) as f32 * unit,
        ((z >> 16) & 0xff_ffff) as f32 * unit,
    ]
}

/// Append the encoding of `values` to `out`. Stochastic draws are keyed by a value's position in
/// `values`.
pub fn encode(
    values: &[f32],
    codec: ValueCodec,
    block_size: u32,
    rounding: Rounding,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    out.reserve(encoded_len(codec, block_size, values.len()));
    if codec == ValueCodec::Fp16 {
        return encode_fp16(values, out);
    }
    let block_size = block_size as usize;
    // Scales first, then the codes; each block's codes fill whole bytes (blocks are multiples of
    // 8 values), so a block is quantized and packed while it is still in the cache.
    let start = out.len();
    out.resize(
        start + encoded_len(codec, block_size as u32, values.len()),
        0,
    );
    let (scales, packed) =
        out[start..].split_at_mut(values.len().div_ceil(block_size) * SCALE_LEN_BYTES);
    dispatch!(quantize_blocks(
        values, codec, block_size, rounding, scales, packed
    ))
}

/// The integer codecs' encoding loop over blocks (the caller has placed the two regions).
#[inline(always)]
fn quantize_blocks(
    values: &[f32],
    codec: ValueCodec,
    block_size: usize,
    rounding: Rounding,
    scales: &mut [u8],
    packed: &mut [u8],
) -> Result<(), CodecError> {
    let level_max = codec.max_level().expect("an integer codec");
    let bits = codec.bits() as usize;
    let mut codes = vec![0u8; block_size.min(values.len())];
    for (block_index, ((block, scale_bytes), block_packed)) in values
        .chunks(block_size)
        .zip(scales.chunks_exact_mut(SCALE_LEN_BYTES))
        .zip(packed.chunks_mut(block_size * bits / 8))
        .enumerate()
    {
        let block_codes = &mut codes[..block.len()];
        let scale = checked_absmax(block)?;
        scale_bytes.copy_from_slice(&scale.to_le_bytes());
        let to_level = if scale > 0.0 {
            level_max as f32 / scale
        } else {
            0.0
        };
        let top = (2 * level_max) as i32;
        // Shifted by L the level is never negative, so truncation toward zero is the floor; that
        // keeps the loop free of calls to `round`, which the baseline x86-64 cannot vectorize.
        match rounding {
            Rounding::Nearest => {
                let shift = level_max as f32 + 0.5;
                for (code, &value) in block_codes.iter_mut().zip(block) {
                    *code = ((value * to_level + shift) as i32).clamp(0, top) as u8;
                }
            }
            Rounding::Stochastic { seed } => {
                // Blocks hold a multiple of 8 values but the last, so a pair never straddles two.
                let first_pair = (block_index * block_size / 2) as u64;
                let shift = level_max as f32;
                for (pair, (codes, values)) in
                    block_codes.chunks_mut(2).zip(block.chunks(2)).enumerate()
                {
                    let draws = uniform_pair(seed, first_pair + pair as u64);
                    for ((code, &value), draw) in codes.iter_mut().zip(values).zip(draws) {
                        *code = ((value * to_level + shift + draw) as i32).clamp(0, top) as u8;
                    }
                }
            }
        }
        pack(block_codes, codec.bits(), block_packed);
    }
    Ok(())
}

fn encode_fp16(values: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let absmax = checked_absmax(values)?;
    if absmax > FP16_MAX {
        return Err(CodecError::Invalid(format!(
            "fp16 carries magnitudes up to {FP16_MAX}, got {absmax}: use an integer codec (scaled)"
        )));
    }
    let start = out.len();
    out.resize(start + values.len() * 2, 0);
    // Converted a run at a time through a small buffer, so `half` can use the CPU's F16C
    // instructions where it has them.
    let mut halves = [half::f16::ZERO; FP16_RUN];
    for (run, bytes) in values
        .chunks(FP16_RUN)
        .zip(out[start..].chunks_mut(2 * FP16_RUN))
    {
        let halves = &mut halves[..run.len()];
        halves.convert_from_f32_slice(run);
        for (pair, half) in bytes.chunks_exact_mut(2).zip(halves.iter()) {
            pair.copy_from_slice(&half.to_bits().to_le_bytes());
        }
    }
    Ok(())
}

#[inline(always)]
fn pack(codes: &[u8], bits: u32, out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            for (byte, pair) in out.iter_mut().zip(codes.chunks(2)) {
                *byte = pair.iter().rev().fold(0, |byte, &code| (byte << 4) | code);
            }
        }
        2 => {
            for (byte, quad) in out.iter_mut().zip(codes.chunks(4)) {
                *byte = quad.iter().rev().fold(0, |byte, &code| (byte << 2) | code);
            }
        }
        _ => unreachable!("no codec packs {bits}-bit codes"),
    }
}

/// Decode exactly `out.len()` values from `bytes`, which must be exactly their encoding.
pub fn decode(
    bytes: &[u8],
    codec: ValueCodec,
    block_size: u32,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let want = encoded_len(codec, block_size, out.len());
    if bytes.len() != want {
        return malformed(format!(
            "{} values of {} take {want} bytes, the frame has {}",
            out.len(),
            codec.name(),
            bytes.len()
        ));
    }
    if codec == ValueCodec::Fp16 {
        return decode_fp16(bytes, out);
    }
    let block_size = block_size as usize;
    let (scales, codes) = bytes.split_at(out.len().div_ceil(block_size) * SCALE_LEN_BYTES);
    dispatch!(dequantize_blocks(scales, codes, codec, block_size, out))?;
    let used_bits = out.len() * codec.bits() as usize % 8;
    if used_bits != 0 && codes.last().is_some_and(|&last| last >> used_bits != 0) {
        return malformed("padding bits of the last code byte are not zero");
    }
    Ok(())
}

/// The integer codecs' decoding loop over blocks: unpacked and scaled block by block.
#[inline(always)]
fn dequantize_blocks(
    scales: &[u8],
    codes: &[u8],
    codec: ValueCodec,
    block_size: usize,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let level_max = codec.max_level().expect("an integer codec");
    let bits = codec.bits() as usize;
    let top = (2 * level_max) as f32;
    let mut bad_code = false;
    for ((block, scale), block_codes) in out
        .chunks_mut(block_size)
        .zip(scales.chunks_exact(SCALE_LEN_BYTES))
        .zip(codes.chunks(block_size * bits / 8))
    {
        let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        // Negative zero, NaN, infinities and negatives: none is the magnitude of finite values.
        if !(scale.is_finite() && scale.is_sign_positive()) {
            return malformed(format!("block scale {scale} is not a finite magnitude"));
        }
        // Unpacked and scaled block by block, while the block is in the cache.
        unpack(block_codes, codec.bits(), block);
        let step = scale / level_max as f32;
        let shift = level_max as f32;
        for value in block.iter_mut() {
            bad_code |= *value > top;
            *value = (*value - shift) * step;
        }
    }
    if bad_code {
        return malformed(format!("a code lies beyond {}'s levels", codec.name()));
    }
    Ok(())
}

fn decode_fp16(bytes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    let mut halves = [half::f16::ZERO; FP16_RUN];
    let mut non_finite = false;
    for (run, bytes) in out.chunks_mut(FP16_RUN).zip(bytes.chunks(2 * FP16_RUN)) {
        let halves = &mut halves[..run.len()];
        for (half, pair) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
            let bits = u16::from_le_bytes([pair[0], pair[1]]);
            non_finite |= bits & FP16_EXPONENT_BITS == FP16_EXPONENT_BITS;
            *half = half::f16::from_bits(bits);
        }
        halves.convert_to_f32_slice(run);
    }
    if non_finite {
        return malformed("fp16 value is NaN or infinite");
    }
    Ok(())
}

/// Spread the packed codes into `out` as floats (the raw code, shifted later).
#[inline(always)]
fn unpack(codes: &[u8], bits: u32, out: &mut [f32]) {
    match bits {
        8 => {
            for (value, &code) in out.iter_mut().zip(codes) {
                *value = code as f32;
            }
        }
        4 => {
            for (pair, &byte) in out.chunks_mut(2).zip(codes) {
                for (slot, value) in pair.iter_mut().enumerate() {
                    *value = ((byte >> (4 * slot)) & 0x0f) as f32;
                }
            }
        }
        2 => {
            for (quad, &byte) in out.chunks_mut(4).zip(codes) {
                for (slot, value) in quad.iter_mut().enumerate() {
                    *value = ((byte >> (2 * slot)) & 0x03) as f32;
                }
            }
        }
        _ => unreachable!("no codec packs {bits}-bit codes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| (uniform_pair(seed, i)[0] - 0.5) * 3.0)
            .collect()
    }

    fn round_trip(values: &[f32], codec: ValueCodec, block: u32, rounding: Rounding) -> Vec<f32> {
        let mut bytes = Vec::new();
        encode(values, codec, block, rounding, &mut bytes).unwrap();
        assert_eq!(bytes.len(), encoded_len(codec, block, values.len()));
        let mut back = vec![0.0; values.len()];
        decode(&bytes, codec, block, &mut back).unwrap();
        back
    }

    #[test]
    fn each_integer_codec_is_within_half_a_step() {
        let values = sample(1000, 1);
        for codec in [ValueCodec::Int8, ValueCodec::Int4, ValueCodec::Int2] {
            let level_max = codec.max_level().unwrap() as f32;
            let back = round_trip(&values, codec, 64, Rounding::Nearest);
            for (block, back_block) in values.chunks(64).zip(back.chunks(64)) {
                let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in block.iter().zip(back_block) {
                    assert!(
                        (x - y).abs() <= scale / (2.0 * level_max) * 1.0001,
                        "{codec:?} {x} {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn stochastic_rounding_replays_from_its_seed_and_is_unbiased() {
        let values = vec![0.3f32; 4096];
        let mut with_max = values.clone();
        with_max[0] = 1.0;
        let a = round_trip(
            &with_max,
            ValueCodec::Int2,
            4096,
            Rounding::Stochastic { seed: 9 },
        );
        let b = round_trip(
            &with_max,
            ValueCodec::Int2,
            4096,
            Rounding::Stochastic { seed: 9 },
        );
        let c = round_trip(
            &with_max,
            ValueCodec::Int2,
            4096,
            Rounding::Stochastic { seed: 10 },
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a[1..].iter().sum::<f32>() / 4095.0;
        assert!((mean - 0.3).abs() < 0.03, "mean {mean}");
    }

    #[test]
    fn fp16_round_trips_to_half_precision_and_refuses_what_it_cannot_carry() {
        let values = sample(333, 2);
        let back = round_trip(&values, ValueCodec::Fp16, 64, Rounding::Nearest);
        for (x, y) in values.iter().zip(&back) {
            assert!((x - y).abs() <= x.abs() / 2048.0);
        }
        let mut out = Vec::new();
        assert!(encode(&[1e6], ValueCodec::Fp16, 8, Rounding::Nearest, &mut out).is_err());
        assert!(encode(
            &[f32::NAN],
            ValueCodec::Int8,
            8,
            Rounding::Nearest,
            &mut out
        )
        .is_err());
    }

    #[test]
    fn a_zero_block_stays_zero() {
        let back = round_trip(&[0.0; 20], ValueCodec::Int4, 8, Rounding::Nearest);
        assert!(back.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn decode_rejects_codes_beyond_the_levels_bad_scales_and_padding() {
        let mut bytes = Vec::new();
        encode(
            &[0.5, -1.0, 1.0],
            ValueCodec::Int2,
            8,
            Rounding::Nearest,
            &mut bytes,
        )
        .unwrap();
        let mut out = [0f32; 3];
        let mut bad = bytes.clone();
        bad[4] |= 0b11; // code 3 is not a level of INT2
        assert!(decode(&bad, ValueCodec::Int2, 8, &mut out).is_err());
        let mut bad = bytes.clone();
        bad[4] |= 0b0100_0000; // the fourth, unused slot
        assert!(decode(&bad, ValueCodec::Int2, 8, &mut out).is_err());
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode(&bad, ValueCodec::Int2, 8, &mut out).is_err());
        assert!(decode(&bytes[..4], ValueCodec::Int2, 8, &mut out).is_err());
        decode(&bytes, ValueCodec::Int2, 8, &mut out).unwrap();
    }
}
