//! Chunk-wise top-k: which values of a delta are sent, and how their positions are coded.
//!
//! Per chunk the positions are coded whichever way is smaller, after a mode byte: a bitmap
//! (`ceil(len / 8)` bytes) or the gaps between ascending positions as LEB128 varints (the first
//! position itself, then `position - previous - 1`). At the 1-3% densities that matter, gaps are
//! mostly under 128, so one byte per kept value against a bitmap's 4-12; the bitmap wins above
//! about one value in eight.

use super::{malformed, CodecError, TopK};

const MODE_BITMAP: u8 = 0;
const MODE_GAPS: u8 = 1;

/// How many of `numel` values top-k keeps.
pub fn kept_count(numel: u64, top_k: TopK) -> u64 {
    let chunk = u64::from(top_k.chunk_size);
    let k = u64::from(top_k.k_per_chunk);
    numel / chunk * k + (numel % chunk).min(k)
}

/// Histogram buckets of the selection: a magnitude's top 11 bits (its exponent and the first 3
/// bits of its mantissa), so bucket order is magnitude order.
const BUCKET_SHIFT: u32 = 20;
const BUCKETS: usize = 1 << (31 - BUCKET_SHIFT);

/// The positions (ascending, into `values`) of the kept values: in every chunk the `k_per_chunk`
/// largest magnitudes, ties broken toward the lower position so the choice is deterministic.
pub fn select(values: &[f32], top_k: TopK) -> Vec<u32> {
    let k = top_k.k_per_chunk as usize;
    let mut kept = Vec::with_capacity(kept_count(values.len() as u64, top_k) as usize);
    let mut histogram = vec![0u32; BUCKETS];
    let mut candidates = Vec::new();
    let mut keys = Vec::new();
    let mut scratch = Vec::new();
    for (chunk_index, chunk) in values.chunks(top_k.chunk_size as usize).enumerate() {
        let base = (chunk_index * top_k.chunk_size as usize) as u32;
        if k >= chunk.len() {
            kept.extend(base..base + chunk.len() as u32);
            continue;
        }
        // Every kept value is in the cut's bucket or above it: take those (a few more than k),
        // in position order, then cut exactly among them.
        let floor = cut_bucket(chunk, k, &mut histogram) << BUCKET_SHIFT;
        candidates.clear();
        dispatch!(positions_at_least(chunk, floor, &mut candidates));
        keys.clear();
        keys.extend(candidates.iter().map(|&p| magnitude_key(chunk[p as usize])));
        let cut = keys.len() - k;
        scratch.clone_from(&keys);
        let threshold = *scratch.select_nth_unstable(cut).1;
        let mut ties = k - keys.iter().filter(|&&key| key > threshold).count();
        for (&position, &key) in candidates.iter().zip(&keys) {
            if key > threshold || (key == threshold && ties > 0) {
                ties -= usize::from(key == threshold);
                kept.push(base + position);
            }
        }
    }
    kept
}

/// Magnitude bits order like magnitudes, and integer comparisons are cheaper than float ones.
#[inline(always)]
fn magnitude_key(value: f32) -> u32 {
    value.to_bits() & 0x7fff_ffff
}

/// The histogram bucket that holds the chunk's `k`-th largest key.
fn cut_bucket(chunk: &[f32], k: usize, histogram: &mut [u32]) -> u32 {
    histogram.fill(0);
    for &value in chunk {
        histogram[(magnitude_key(value) >> BUCKET_SHIFT) as usize] += 1;
    }
    // The walk down starts at the largest bucket in use: the buckets above it are empty, and
    // walking them would cost as much as the counting. (A separate pass: a running maximum in the
    // counting loop would chain every iteration to the one before.)
    let largest = chunk.iter().map(|&value| magnitude_key(value)).max();
    let mut bucket = (largest.unwrap_or(0) >> BUCKET_SHIFT) as usize;
    let mut above = 0usize;
    while above + (histogram[bucket] as usize) < k {
        above += histogram[bucket] as usize;
        bucket -= 1;
    }
    bucket as u32
}

/// Push the positions of `chunk`'s keys at or above `floor`, ascending. A word of 32 comparisons
/// at a time compiles to vector compares; only the (few) set bits are then visited.
#[inline(always)]
fn positions_at_least(chunk: &[f32], floor: u32, out: &mut Vec<u32>) {
    for (word_index, word) in chunk.chunks(32).enumerate() {
        let mut mask = 0u32;
        for (bit, &value) in word.iter().enumerate() {
            mask |= u32::from(magnitude_key(value) >= floor) << bit;
        }
        while mask != 0 {
            out.push((word_index * 32) as u32 + mask.trailing_zeros());
            mask &= mask - 1;
        }
    }
}

fn varint_len(value: u32) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

fn gaps(positions: &[u32]) -> impl Iterator<Item = u32> + '_ {
    positions
        .iter()
        .scan(None, |previous: &mut Option<u32>, &position| {
            let gap = previous.map_or(position, |p| position - p - 1);
            *previous = Some(position);
            Some(gap)
        })
}

/// The largest index section of one chunk: its mode byte and the smaller of the two codings.
pub fn index_section_len_max(chunk_len: u32, k: u32) -> usize {
    let bitmap = chunk_len.div_ceil(8) as usize;
    let gap_bytes = k as usize * varint_len(chunk_len.saturating_sub(1));
    1 + bitmap.min(gap_bytes)
}

/// Append the index section of one chunk; `positions` are ascending and below `chunk_len`.
pub fn encode_indices(positions: &[u32], chunk_len: u32, out: &mut Vec<u8>) {
    let bitmap_len = chunk_len.div_ceil(8) as usize;
    let gaps_len: usize = gaps(positions).map(varint_len).sum();
    if bitmap_len <= gaps_len {
        out.push(MODE_BITMAP);
        let start = out.len();
        out.resize(start + bitmap_len, 0);
        for &position in positions {
            out[start + position as usize / 8] |= 1 << (position % 8);
        }
    } else {
        out.push(MODE_GAPS);
        for mut gap in gaps(positions) {
            while gap >= 0x80 {
                out.push((gap as u8 & 0x7f) | 0x80);
                gap >>= 7;
            }
            out.push(gap as u8);
        }
    }
}

/// Read one chunk's index section from `bytes` at `*cursor`: exactly `k` ascending positions below
/// `chunk_len`, pushed to `out` plus `base`. Anything else is malformed.
pub fn decode_indices(
    bytes: &[u8],
    cursor: &mut usize,
    chunk_len: u32,
    k: u32,
    base: u32,
    out: &mut Vec<u32>,
) -> Result<(), CodecError> {
    let Some(&mode) = bytes.get(*cursor) else {
        return malformed("index section cut short");
    };
    *cursor += 1;
    match mode {
        MODE_BITMAP => {
            let len = chunk_len.div_ceil(8) as usize;
            let Some(bitmap) = bytes.get(*cursor..*cursor + len) else {
                return malformed("bitmap cut short");
            };
            *cursor += len;
            let count: u32 = bitmap.iter().map(|byte| byte.count_ones()).sum();
            if count != k {
                return malformed(format!(
                    "bitmap holds {count} positions, the chunk keeps {k}"
                ));
            }
            let tail_bits = chunk_len % 8;
            if tail_bits != 0 && bitmap[len - 1] >> tail_bits != 0 {
                return malformed("bitmap marks positions past the chunk's end");
            }
            for (byte_index, &byte) in bitmap.iter().enumerate() {
                let mut rest = byte;
                while rest != 0 {
                    out.push(base + (byte_index * 8) as u32 + rest.trailing_zeros());
                    rest &= rest - 1;
                }
            }
        }
        MODE_GAPS => {
            let mut next = 0u64;
            for _ in 0..k {
                let gap = read_varint(bytes, cursor)?;
                let position = next + u64::from(gap);
                if position >= u64::from(chunk_len) {
                    return malformed(format!("position {position} past the chunk's {chunk_len}"));
                }
                out.push(base + position as u32);
                next = position + 1;
            }
        }
        _ => return malformed(format!("unknown index mode {mode}")),
    }
    Ok(())
}

fn read_varint(bytes: &[u8], cursor: &mut usize) -> Result<u32, CodecError> {
    let mut value = 0u32;
    // A position fits in 3 varint bytes (chunks hold at most 2^16 values).
    for shift in [0, 7, 14] {
        let Some(&byte) = bytes.get(*cursor) else {
            return malformed("position gap cut short");
        };
        *cursor += 1;
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    malformed("position gap longer than 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_the_largest_magnitudes_of_each_chunk() {
        let values = [
            0.1, -5.0, 0.2, 3.0, /* chunk 2 */ 1.0, 1.0, -1.0, 0.0, /* tail */ 7.0,
        ];
        let kept = select(
            &values,
            TopK {
                chunk_size: 4,
                k_per_chunk: 2,
            },
        );
        // Ties in chunk 2 go to the lower positions; the tail keeps all it has.
        assert_eq!(kept, vec![1, 3, 4, 5, 8]);
        assert_eq!(
            kept_count(
                9,
                TopK {
                    chunk_size: 4,
                    k_per_chunk: 2
                }
            ),
            5
        );
    }

    #[test]
    fn select_agrees_with_a_full_sort() {
        let mut state = 7u64;
        for round in 0..200u32 {
            // Few distinct magnitudes in some rounds, so ties and crowded buckets are common.
            let distinct = if round % 2 == 0 { 5 } else { 1 << 20 };
            let values: Vec<f32> = (0..1000)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let magnitude = ((state >> 33) % distinct) as f32 / 7.0;
                    if state >> 63 == 1 {
                        -magnitude
                    } else {
                        magnitude
                    }
                })
                .collect();
            let top_k = TopK {
                chunk_size: 128,
                k_per_chunk: 1 + round % 100,
            };
            let mut expected = Vec::new();
            for (index, chunk) in values.chunks(128).enumerate() {
                let mut order: Vec<usize> = (0..chunk.len()).collect();
                order.sort_by(|&a, &b| chunk[b].abs().total_cmp(&chunk[a].abs()).then(a.cmp(&b)));
                let mut chosen: Vec<u32> = order[..chunk.len().min(top_k.k_per_chunk as usize)]
                    .iter()
                    .map(|&offset| (index * 128 + offset) as u32)
                    .collect();
                chosen.sort_unstable();
                expected.extend(chosen);
            }
            assert_eq!(select(&values, top_k), expected, "round {round}");
        }
    }

    fn round_trip(positions: &[u32], chunk_len: u32) -> (u8, Vec<u32>) {
        let mut bytes = Vec::new();
        encode_indices(positions, chunk_len, &mut bytes);
        assert!(bytes.len() <= index_section_len_max(chunk_len, positions.len() as u32));
        let mut cursor = 0;
        let mut out = Vec::new();
        decode_indices(
            &bytes,
            &mut cursor,
            chunk_len,
            positions.len() as u32,
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(cursor, bytes.len());
        (bytes[0], out.iter().map(|p| p - 100).collect())
    }

    #[test]
    fn sparse_chunks_code_gaps_and_dense_ones_a_bitmap() {
        let sparse: Vec<u32> = (0..41).map(|i| i * 99 + 7).collect();
        assert_eq!(round_trip(&sparse, 4096), (MODE_GAPS, sparse.clone()));
        let dense: Vec<u32> = (0..1000).map(|i| i * 4).collect();
        assert_eq!(round_trip(&dense, 4096), (MODE_BITMAP, dense.clone()));
        let far = vec![0, 65_000, 65_535];
        assert_eq!(round_trip(&far, 65_536), (MODE_GAPS, far.clone()));
    }

    #[test]
    fn decoding_rejects_counts_positions_and_cuts_that_do_not_fit() {
        let mut cursor = 0;
        let mut out = Vec::new();
        // Bitmap with 2 positions where 3 are due; a bit past a 12-value chunk; an unknown mode.
        assert!(decode_indices(&[0, 0b11, 0], &mut cursor, 12, 3, 0, &mut out).is_err());
        cursor = 0;
        assert!(decode_indices(&[0, 0, 0b1_0000], &mut cursor, 12, 1, 0, &mut out).is_err());
        cursor = 0;
        assert!(decode_indices(&[7], &mut cursor, 12, 1, 0, &mut out).is_err());
        // Gaps running past the chunk, a cut varint, an over-long varint.
        cursor = 0;
        assert!(decode_indices(&[1, 5, 6], &mut cursor, 12, 2, 0, &mut out).is_err());
        cursor = 0;
        assert!(decode_indices(&[1, 0x80], &mut cursor, 12, 1, 0, &mut out).is_err());
        cursor = 0;
        assert!(decode_indices(
            &[1, 0x80, 0x80, 0x80, 1],
            &mut cursor,
            65_536,
            1,
            0,
            &mut out
        )
        .is_err());
    }
}
