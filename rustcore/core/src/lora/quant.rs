//! Blockwise quantization: one f32 scale (the block's largest magnitude) per `block_size` values,
//! then each value as a level `q` in `[-L, L]`, stored as `q + L` in `bits` bits, packed
//! little-endian (value `i` in the low bits first). FP16 stores each value as IEEE half instead.
//!
//! Layout of `n` values: `ceil(n / block_size)` scales (f32 LE; none for FP16), then the codes,
//! `ceil(n * bits / 8)` bytes, the unused high bits of the last byte zero.

use super::{fp16, malformed, stream, CodecError, Rounding, ValueCodec};

const SCALE_LEN_BYTES: usize = 4;
/// The bits of a float with its sign cleared compare as integers in the order of magnitudes, and
/// every NaN and infinity is at or above this one.
const NON_FINITE_BITS_MIN: u32 = 0x7f80_0000;
/// Values decoded per piece (whole blocks, at least one): 16 KiB of f32 stays in the L1 cache
/// until it is streamed out.
const PIECE_VALUES: usize = 4096;

/// Bytes that `n` values take.
pub fn encoded_len(codec: ValueCodec, block_size: u32, n: usize) -> usize {
    let scales = if codec.has_scales() {
        n.div_ceil(block_size as usize) * SCALE_LEN_BYTES
    } else {
        0
    };
    scales + (n * codec.bits() as usize).div_ceil(8)
}

/// The bits of the largest magnitude in `values` (integer max: no per-value branch on NaN).
#[inline(always)]
pub(super) fn largest_magnitude_bits(values: &[f32]) -> u32 {
    values
        .iter()
        .fold(0u32, |max, &v| max.max(v.to_bits() & 0x7fff_ffff))
}

/// The magnitude whose bits are `bits`, or an error when it is a NaN or an infinity (they would
/// poison a sum).
pub(super) fn checked_magnitude(bits: u32) -> Result<f32, CodecError> {
    if bits >= NON_FINITE_BITS_MIN {
        return Err(CodecError::Invalid(
            "values must be finite (found NaN or infinity)".into(),
        ));
    }
    Ok(f32::from_bits(bits))
}

/// Two uniform draws in [0, 1) for the values at positions `2 * pair` and `2 * pair + 1`, from
/// the seed and the pair (splitmix64's finalizer; 24 bits each from its top 48). Stateless, so
/// stochastic rounding replays for a seed, and a block's draws compute as vectors.
#[inline(always)]
fn uniform_pair(seed: u64, pair: u64) -> [f32; 2] {
    let mut z = seed ^ pair.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let unit = 1.0 / (1u64 << 24) as f32;
    // 24-bit integers convert exactly through i32, the conversion vector units have.
    [
        (z >> 40) as i32 as f32 * unit,
        ((z >> 16) & 0xff_ffff) as i32 as f32 * unit,
    ]
}

/// The draws of the values at positions `2 * first_pair ..` (the last pair may be half used).
#[inline(always)]
fn fill_draws(seed: u64, first_pair: u64, draws: &mut [f32]) {
    let mut pairs = draws.chunks_exact_mut(2);
    let mut pair = first_pair;
    for slot in &mut pairs {
        slot.copy_from_slice(&uniform_pair(seed, pair));
        pair += 1;
    }
    if let [last] = pairs.into_remainder() {
        *last = uniform_pair(seed, pair)[0];
    }
}

/// Write the encoding of `values` to `out`, which is exactly [`encoded_len`] bytes long.
/// Stochastic draws are keyed by a value's position in `values`.
pub fn encode(
    values: &[f32],
    codec: ValueCodec,
    block_size: u32,
    rounding: Rounding,
    out: &mut [u8],
) -> Result<(), CodecError> {
    assert_eq!(out.len(), encoded_len(codec, block_size, values.len()));
    if codec == ValueCodec::Fp16 {
        return fp16::encode(values, out);
    }
    let block_size = block_size as usize;
    // Scales first, then the codes; each block's codes fill whole bytes (blocks are multiples of
    // 8 values), so a block is quantized and packed while it is still in the cache.
    let (scales, packed) = out.split_at_mut(values.len().div_ceil(block_size) * SCALE_LEN_BYTES);
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
    let block_len_max = block_size.min(values.len());
    let mut codes = vec![0u8; block_len_max];
    let mut shifted = vec![0f32; block_len_max];
    for (block_index, ((block, scale_bytes), block_packed)) in values
        .chunks(block_size)
        .zip(scales.chunks_exact_mut(SCALE_LEN_BYTES))
        .zip(packed.chunks_mut(block_size * bits / 8))
        .enumerate()
    {
        let block_codes = &mut codes[..block.len()];
        let shifted = &mut shifted[..block.len()];
        let scale = checked_magnitude(largest_magnitude_bits(block))?;
        scale_bytes.copy_from_slice(&scale.to_le_bytes());
        let to_level = if scale > 0.0 {
            level_max as f32 / scale
        } else {
            0.0
        };
        // Shifted by L the level is never negative, so truncation toward zero is the floor; that
        // keeps the loop free of calls to `round`, which the baseline x86-64 cannot vectorize.
        match rounding {
            Rounding::Nearest => {
                let shift = level_max as f32 + 0.5;
                for (x, &value) in shifted.iter_mut().zip(block) {
                    *x = value * to_level + shift;
                }
            }
            Rounding::Stochastic { seed } => {
                // Blocks hold a multiple of 8 values but the last, so a pair never straddles two.
                fill_draws(seed, (block_index * block_size / 2) as u64, shifted);
                let shift = level_max as f32;
                // The draw is added last (addition commutes, so `+=` is the same sum).
                for (x, &value) in shifted.iter_mut().zip(block) {
                    *x += value * to_level + shift;
                }
            }
        }
        truncate_to_codes(shifted, (2 * level_max) as u8, block_codes);
        match bits {
            8 => block_packed.copy_from_slice(block_codes),
            4 => pack::<2>(block_codes, block_packed),
            2 => pack::<4>(block_codes, block_packed),
            _ => unreachable!("no codec packs {bits}-bit codes"),
        }
    }
    Ok(())
}

/// `codes[i]` = `shifted[i]` truncated toward zero, then clamped to `0..=top` (a NaN gives 0, as
/// Rust's saturating cast does).
#[inline(always)]
fn truncate_to_codes(shifted: &[f32], top: u8, codes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    let done = truncate_to_codes_sse2(shifted, top, codes);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    truncate_to_codes_portable(&shifted[done..], top, &mut codes[done..]);
}

#[inline(always)]
fn truncate_to_codes_portable(shifted: &[f32], top: u8, codes: &mut [u8]) {
    for (code, &x) in codes.iter_mut().zip(shifted) {
        *code = (x as i32).clamp(0, i32::from(top)) as u8;
    }
}

/// [`truncate_to_codes_portable`] 16 values at a time, for as many whole sixteens as `shifted`
/// holds; returns how many it did. The compiler keeps the saturating cast scalar (a compare and
/// a branch per value), at an eighth of this speed. Clamping before the conversion keeps the
/// cast's results: a NaN (as `max`'s first operand) gives 0, an infinity a bound.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn truncate_to_codes_sse2(shifted: &[f32], top: u8, codes: &mut [u8]) -> usize {
    use std::arch::x86_64::{
        _mm_cvttps_epi32, _mm_loadu_ps, _mm_max_ps, _mm_min_ps, _mm_packs_epi32, _mm_packus_epi16,
        _mm_set1_ps, _mm_setzero_ps, _mm_storeu_si128,
    };
    let sixteens = shifted.chunks_exact(16);
    let done = shifted.len() - sixteens.remainder().len();
    for (xs, codes) in sixteens.zip(codes.chunks_exact_mut(16)) {
        // SAFETY: SSE2 is part of every x86-64 CPU; each load reads 4 of the 16 floats of `xs`,
        // and the store writes the 16 bytes of `codes`.
        unsafe {
            let code = |at: usize| {
                let x = _mm_loadu_ps(xs[at..at + 4].as_ptr());
                let clamped = _mm_min_ps(_mm_max_ps(x, _mm_setzero_ps()), _mm_set1_ps(top.into()));
                _mm_cvttps_epi32(clamped)
            };
            // Levels fit 16 bits and then 8 unsaturated: the packs only narrow.
            let low = _mm_packs_epi32(code(0), code(4));
            let high = _mm_packs_epi32(code(8), code(12));
            _mm_storeu_si128(codes.as_mut_ptr().cast(), _mm_packus_epi16(low, high));
        }
    }
    done
}

/// Pack `PER_BYTE` codes a byte, the first in the low bits; a last, partial byte is zero-padded.
#[inline(always)]
fn pack<const PER_BYTE: usize>(codes: &[u8], out: &mut [u8]) {
    let bits = 8 / PER_BYTE;
    let byte_of = |group: &[u8]| {
        group
            .iter()
            .enumerate()
            .fold(0, |byte, (slot, &code)| byte | code << (bits * slot))
    };
    let mut groups = codes.chunks_exact(PER_BYTE);
    for (byte, group) in out.iter_mut().zip(&mut groups) {
        *byte = byte_of(group);
    }
    if !groups.remainder().is_empty() {
        out[codes.len() / PER_BYTE] = byte_of(groups.remainder());
    }
}

/// Refuse `bytes` unless they are exactly as long as the encoding of `n` values.
pub(super) fn check_encoded_len(
    bytes: &[u8],
    codec: ValueCodec,
    block_size: u32,
    n: usize,
) -> Result<(), CodecError> {
    let want = encoded_len(codec, block_size, n);
    if bytes.len() != want {
        return malformed(format!(
            "{n} values of {} take {want} bytes, the frame has {}",
            codec.name(),
            bytes.len()
        ));
    }
    Ok(())
}

/// Decode exactly `out.len()` values from `bytes`, which must be exactly their encoding.
pub fn decode(
    bytes: &[u8],
    codec: ValueCodec,
    block_size: u32,
    out: &mut [f32],
) -> Result<(), CodecError> {
    check_encoded_len(bytes, codec, block_size, out.len())?;
    if codec == ValueCodec::Fp16 {
        return fp16::decode(bytes, out);
    }
    let block_size = block_size as usize;
    let (scales, codes) = bytes.split_at(out.len().div_ceil(block_size) * SCALE_LEN_BYTES);
    match codec.bits() {
        8 => dequantize_blocks::<1>(scales, codes, codec, block_size, out)?,
        4 => dequantize_blocks::<2>(scales, codes, codec, block_size, out)?,
        2 => dequantize_blocks::<4>(scales, codes, codec, block_size, out)?,
        bits => unreachable!("no codec packs {bits}-bit codes"),
    }
    let used_bits = out.len() * codec.bits() as usize % 8;
    if used_bits != 0 && codes.last().is_some_and(|&last| last >> used_bits != 0) {
        return malformed("padding bits of the last code byte are not zero");
    }
    Ok(())
}

/// The integer codecs' decoding, `PER_BYTE` codes a byte, in pieces of whole blocks (see
/// [`stream`]).
fn dequantize_blocks<const PER_BYTE: usize>(
    scales: &[u8],
    codes: &[u8],
    codec: ValueCodec,
    block_size: usize,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let level_max = codec.max_level().expect("an integer codec");
    // A byte a value converts faster than it looks up; smaller codes look up a byte at a time.
    let levels = (PER_BYTE > 1).then(|| level_table::<PER_BYTE>(level_max));
    let blocks_per_piece = (PIECE_VALUES / block_size).max(1);
    let piece_codes_len = blocks_per_piece * block_size / PER_BYTE;
    let mut bad_code = false;
    stream::fill_in_pieces(out, blocks_per_piece * block_size, |start, piece| {
        let piece_index = start / (blocks_per_piece * block_size);
        let scales = scales
            .chunks(blocks_per_piece * SCALE_LEN_BYTES)
            .nth(piece_index)
            .expect("a scale per block");
        let codes = codes
            .chunks(piece_codes_len)
            .nth(piece_index)
            .expect("codes for every value");
        bad_code |= dispatch!(dequantize_piece(
            scales,
            codes,
            levels.as_ref(),
            level_max,
            block_size,
            piece
        ))?;
        Ok(())
    })?;
    if bad_code {
        return malformed(format!("a code lies beyond {}'s levels", codec.name()));
    }
    Ok(())
}

/// Decode the blocks of one piece: `scales` and `codes` are the piece's. Returns whether a code
/// lies beyond the levels.
#[inline(always)]
fn dequantize_piece<const PER_BYTE: usize>(
    scales: &[u8],
    codes: &[u8],
    levels: Option<&[[f32; PER_BYTE]; 256]>,
    level_max: u32,
    block_size: usize,
    piece: &mut [f32],
) -> Result<bool, CodecError> {
    let level_max = level_max as f32;
    let mut bad_code = false;
    for ((block, scale), block_codes) in piece
        .chunks_mut(block_size)
        .zip(scales.chunks_exact(SCALE_LEN_BYTES))
        .zip(codes.chunks(block_size / PER_BYTE))
    {
        let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        // Negative zero, NaN, infinities and negatives: none is the magnitude of finite values.
        if !(scale.is_finite() && scale.is_sign_positive()) {
            return malformed(format!("block scale {scale} is not a finite magnitude"));
        }
        bad_code |= holds_unused_code::<PER_BYTE>(block_codes);
        let step = scale / level_max;
        match levels {
            Some(levels) => unpack_scaled(block_codes, levels, step, block),
            None => {
                for (value, &code) in block.iter_mut().zip(block_codes) {
                    *value = (code as f32 - level_max) * step;
                }
            }
        }
    }
    Ok(bad_code)
}

/// Whether a code in `codes` is all ones: the one code of each width beyond the levels (`2 L + 1`).
#[inline(always)]
fn holds_unused_code<const PER_BYTE: usize>(codes: &[u8]) -> bool {
    let bits = 8 / PER_BYTE;
    let ones = u8::MAX >> (8 - bits);
    codes.iter().fold(false, |bad, &byte| {
        (0..PER_BYTE).fold(bad, |bad, slot| {
            bad | ((byte >> (bits * slot)) & ones == ones)
        })
    })
}

/// Every byte's `PER_BYTE` values as levels (the code less `L`), so that decoding a byte of
/// sub-byte codes is one table load and a multiply, not a shift, mask and conversion per value.
fn level_table<const PER_BYTE: usize>(level_max: u32) -> [[f32; PER_BYTE]; 256] {
    let bits = 8 / PER_BYTE;
    let ones = (1 << bits) - 1;
    std::array::from_fn(|byte| {
        std::array::from_fn(|slot| ((byte >> (bits * slot)) & ones) as f32 - level_max as f32)
    })
}

/// `block`'s values from its packed codes through the level table, times `step`.
#[inline(always)]
fn unpack_scaled<const PER_BYTE: usize>(
    codes: &[u8],
    levels: &[[f32; PER_BYTE]; 256],
    step: f32,
    block: &mut [f32],
) {
    let full_bytes = block.len() / PER_BYTE;
    let mut groups = block.chunks_exact_mut(PER_BYTE);
    for (group, &byte) in (&mut groups).zip(codes) {
        for (value, level) in group.iter_mut().zip(levels[byte as usize]) {
            *value = level * step;
        }
    }
    let rest = groups.into_remainder();
    if let Some(&byte) = codes.get(full_bytes) {
        for (value, level) in rest.iter_mut().zip(levels[byte as usize]) {
            *value = level * step;
        }
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

    fn encoded(
        values: &[f32],
        codec: ValueCodec,
        block: u32,
        rounding: Rounding,
    ) -> Result<Vec<u8>, CodecError> {
        let mut bytes = vec![0; encoded_len(codec, block, values.len())];
        encode(values, codec, block, rounding, &mut bytes)?;
        Ok(bytes)
    }

    fn round_trip(values: &[f32], codec: ValueCodec, block: u32, rounding: Rounding) -> Vec<f32> {
        let bytes = encoded(values, codec, block, rounding).unwrap();
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
        assert!(encoded(&[1e6], ValueCodec::Fp16, 8, Rounding::Nearest).is_err());
        assert!(encoded(&[f32::NAN], ValueCodec::Int8, 8, Rounding::Nearest).is_err());
    }

    #[test]
    fn codes_truncate_and_clamp_as_the_saturating_cast_does() {
        let edges = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            -0.999,
            -1.0,
            0.999_999_94,
            1.0,
            1.5,
            2.0,
            2.999_999_8,
            14.5,
            15.0,
            126.999_99,
            254.0,
            254.5,
            255.0,
            256.0,
            -70000.0,
            70000.0,
            3e9,
            -3e9,
            f32::from_bits(1),
        ];
        let mut state = 11u64;
        let shifted: Vec<f32> = edges
            .into_iter()
            .chain((0..200).map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 40) as f32 / (1 << 16) as f32 - 4.0
            }))
            .collect();
        for top in [2, 14, 254] {
            // Every start, so the vector path meets each value in every lane and the tail too.
            for start in 0..16 {
                let shifted = &shifted[start..];
                let mut want = vec![0u8; shifted.len()];
                truncate_to_codes_portable(shifted, top, &mut want);
                let mut got = vec![0u8; shifted.len()];
                truncate_to_codes(shifted, top, &mut got);
                assert_eq!(got, want, "top {top}, start {start}");
            }
        }
    }

    #[test]
    fn a_streamed_decode_is_the_decodes_of_its_pieces() {
        // An output past the streaming threshold, with a last piece and block cut short.
        let len = stream::STREAMED_BYTES_MIN / 4 + PIECE_VALUES + 37;
        let values = sample(len, 4);
        for codec in ValueCodec::ALL {
            let block = 64;
            let mut whole = vec![0f32; len];
            let bytes = encoded(&values, codec, block, Rounding::Nearest).unwrap();
            decode(&bytes, codec, block, &mut whole).unwrap();
            // Pieces of whole blocks quantize alone to the same codes, and decode in place.
            for (piece, got) in values.chunks(PIECE_VALUES).zip(whole.chunks(PIECE_VALUES)) {
                assert_eq!(
                    round_trip(piece, codec, block, Rounding::Nearest),
                    got,
                    "{codec:?}"
                );
            }
        }
    }

    #[test]
    fn every_code_in_every_slot_decodes_to_its_level_times_the_step() {
        for codec in [ValueCodec::Int8, ValueCodec::Int4, ValueCodec::Int2] {
            let bits = codec.bits() as usize;
            let level_max = codec.max_level().unwrap();
            let ones = u8::MAX >> (8 - bits);
            // Every byte whose codes are all levels, so each code meets each slot; a subnormal
            // scale too, where the step is far below the smallest normal.
            let bytes: Vec<u8> = (0..=255u8)
                .filter(|&b| (0..8 / bits).all(|slot| (b >> (bits * slot)) & ones < ones))
                .collect();
            for scale in [3.0, f32::from_bits(3)] {
                // One block of 64 values a scale: 64 * bits / 8 code bytes each.
                let block_bytes = 64 * bits / 8;
                let blocks = bytes.len().div_ceil(block_bytes);
                let mut codes = bytes.clone();
                codes.resize(blocks * block_bytes, 0);
                let mut frame: Vec<u8> = (0..blocks).flat_map(|_| scale.to_le_bytes()).collect();
                frame.extend_from_slice(&codes);
                let mut out = vec![0f32; blocks * 64];
                decode(&frame, codec, 64, &mut out).unwrap();
                let step = scale / level_max as f32;
                for (index, &value) in out.iter().enumerate() {
                    let code = (codes[index * bits / 8] >> (index * bits % 8)) & ones;
                    let want = (code as f32 - level_max as f32) * step;
                    assert_eq!(value.to_bits(), want.to_bits(), "{codec:?} value {index}");
                }
            }
        }
    }

    #[test]
    fn a_zero_block_stays_zero() {
        let back = round_trip(&[0.0; 20], ValueCodec::Int4, 8, Rounding::Nearest);
        assert!(back.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn decode_rejects_codes_beyond_the_levels_bad_scales_and_padding() {
        let bytes = encoded(&[0.5, -1.0, 1.0], ValueCodec::Int2, 8, Rounding::Nearest).unwrap();
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
