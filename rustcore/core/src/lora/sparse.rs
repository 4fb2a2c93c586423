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

/// Chunk-wise top-k, one chunk after another: in every chunk the `k_per_chunk` largest
/// magnitudes, ties broken toward the lower position so the choice is deterministic.
///
/// Every kept value is at or above some floor: take the positions at or above it (a few more
/// than k), in position order, then cut exactly among them. The floor comes from the chunk
/// before (the magnitude a few ranks below its cut): the chunks of one delta are much alike, so
/// one vector pass usually finds them all. When it does not, the floor is the bucket of a
/// histogram of the chunk's magnitudes that holds the cut. Either way the result is the same.
pub struct Selector {
    k: usize,
    /// Candidates wanted beyond k, so that the next chunk's cut is rarely above the floor: the
    /// count above a fixed floor varies by about its square root.
    spare: usize,
    floor_from_before: Option<u32>,
    // Reused from chunk to chunk, so a selection allocates nothing per chunk.
    histogram: Vec<u32>,
    positions: Vec<u32>,
    keys: Vec<u32>,
    scratch: Vec<u32>,
}

impl Selector {
    pub fn new(k_per_chunk: u32) -> Self {
        let k = k_per_chunk as usize;
        Self {
            k,
            spare: 4 * k.isqrt() + 8,
            floor_from_before: None,
            histogram: vec![0; BUCKETS],
            positions: Vec::new(),
            keys: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Push the positions (ascending, into `chunk`) of the chunk's kept values to `kept`.
    pub fn select(&mut self, chunk: &[f32], kept: &mut Vec<u32>) {
        let k = self.k;
        if k >= chunk.len() {
            kept.extend(0..chunk.len() as u32);
            return;
        }
        let mut count = 0;
        if let Some(floor) = self.floor_from_before {
            count = dispatch!(positions_at_least(chunk, floor, &mut self.positions));
        }
        // Too few, or so many that a histogram costs less than cutting among them.
        if !(k..=2 * (k + self.spare)).contains(&count) {
            let floor = cut_bucket(chunk, k, &mut self.histogram) << BUCKET_SHIFT;
            count = dispatch!(positions_at_least(chunk, floor, &mut self.positions));
        }
        let candidates = &self.positions[..count];
        let keys = &mut self.keys;
        keys.clear();
        keys.extend(candidates.iter().map(|&p| magnitude_key(chunk[p as usize])));
        self.scratch.clone_from(keys);
        let (below, &mut threshold, _) = self.scratch.select_nth_unstable(count - k);
        self.floor_from_before = Some(match below.len().checked_sub(self.spare) {
            Some(rank) => *below.select_nth_unstable(rank).1,
            None => below.iter().copied().min().unwrap_or(threshold),
        });
        // Written whether taken or not, then kept by advancing: the cut falls unpredictably.
        let mut ties = k - keys.iter().filter(|&&key| key > threshold).count();
        let start = kept.len();
        kept.resize(start + count, 0);
        let mut end = start;
        for (&position, &key) in candidates.iter().zip(keys.iter()) {
            kept[end] = position;
            let tie = key == threshold;
            let take = (key > threshold) | (tie & (ties > 0));
            end += usize::from(take);
            ties -= usize::from(take & tie);
        }
        kept.truncate(end);
    }
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

/// Positions are written this many at a time, whether or not each is one.
const POSITIONS_PER_STEP: usize = 4;

/// Write the positions of `chunk`'s keys at or above `floor`, ascending, to the start of
/// `positions` (grown to fit), and return how many there are.
///
/// A word of 32 comparisons at a time is a few vector compares, and its set bits are then written
/// in steps of [`POSITIONS_PER_STEP`] (the extras are overwritten by the next word): most words of
/// a sparse selection hold none or a few, and a branch per position mispredicted on every word.
#[inline(always)]
fn positions_at_least(chunk: &[f32], floor: u32, positions: &mut Vec<u32>) -> usize {
    if positions.len() < chunk.len() + POSITIONS_PER_STEP {
        positions.resize(chunk.len() + POSITIONS_PER_STEP, 0);
    }
    let mut count = 0;
    for (word_index, word) in chunk.chunks(32).enumerate() {
        let base = (word_index * 32) as u32;
        let mut mask = word_mask(word, floor);
        let end = count + mask.count_ones() as usize;
        loop {
            for slot in &mut positions[count..count + POSITIONS_PER_STEP] {
                *slot = base + mask.trailing_zeros();
                mask &= mask.wrapping_sub(1);
            }
            count += POSITIONS_PER_STEP;
            if count >= end {
                break;
            }
        }
        count = end;
    }
    count
}

/// Bit `i` set when `word[i]`'s key is at or above `floor` (`word` holds at most 32 values).
#[inline(always)]
fn word_mask(word: &[f32], floor: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if let Ok(word) = <&[f32; 32]>::try_from(word) {
        return word_mask_sse2(word, floor);
    }
    word_mask_portable(word, floor)
}

fn word_mask_portable(word: &[f32], floor: u32) -> u32 {
    word.iter().enumerate().fold(0, |mask, (bit, &value)| {
        mask | u32::from(magnitude_key(value) >= floor) << bit
    })
}

/// [`word_mask_portable`] in 8 compares and movemasks of 4 lanes: the compiler builds the mask
/// from per-lane shifts and a horizontal sum instead, at half the speed.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn word_mask_sse2(word: &[f32; 32], floor: u32) -> u32 {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_castsi128_ps, _mm_cmpgt_epi32, _mm_loadu_si128, _mm_movemask_ps,
        _mm_set1_epi32,
    };
    let mut mask = 0;
    for (quad_index, quad) in word.chunks_exact(4).enumerate() {
        // SAFETY: SSE2 is part of every x86-64 CPU, and `quad` holds the 16 bytes loaded. Keys
        // and floors are below 2^31, so a signed compare orders them; `floor - 1` cannot wrap
        // below zero to matter, as every key is at least 0.
        let lanes = unsafe {
            let keys = _mm_and_si128(
                _mm_loadu_si128(quad.as_ptr().cast()),
                _mm_set1_epi32(0x7fff_ffff),
            );
            let above = _mm_cmpgt_epi32(keys, _mm_set1_epi32(floor as i32 - 1));
            _mm_movemask_ps(_mm_castsi128_ps(above))
        };
        mask |= (lanes as u32) << (4 * quad_index);
    }
    mask
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

    /// The positions (ascending, into `values`) of the kept values of every chunk.
    fn select(values: &[f32], top_k: TopK) -> Vec<u32> {
        let mut selector = Selector::new(top_k.k_per_chunk);
        let mut kept = Vec::new();
        let mut chunk_kept = Vec::new();
        for (index, chunk) in values.chunks(top_k.chunk_size as usize).enumerate() {
            chunk_kept.clear();
            selector.select(chunk, &mut chunk_kept);
            let base = index as u32 * top_k.chunk_size;
            kept.extend(chunk_kept.iter().map(|p| base + p));
        }
        kept
    }

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
        for round in 0..300u32 {
            // Few distinct magnitudes in some rounds, so ties and crowded buckets are common; in
            // others the chunks' scales jump, so the floor a chunk leaves the next is far too
            // high or far too low; chunk sizes off a multiple of 32 take the words' tails.
            let distinct = if round % 2 == 0 { 5 } else { 1 << 20 };
            let chunk_size = [128, 100, 40][round as usize % 3];
            let scales = [1.0, 1.0, 1e3, 1e-3, 1.0];
            let values: Vec<f32> = (0..1000)
                .map(|i| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let mut magnitude = ((state >> 33) % distinct) as f32 / 7.0;
                    if round % 4 == 3 {
                        magnitude *= scales[i / chunk_size % scales.len()];
                    }
                    if state >> 63 == 1 {
                        -magnitude
                    } else {
                        magnitude
                    }
                })
                .collect();
            let top_k = TopK {
                chunk_size: chunk_size as u32,
                k_per_chunk: 1 + round % chunk_size as u32,
            };
            let mut expected = Vec::new();
            for (index, chunk) in values.chunks(chunk_size).enumerate() {
                let mut order: Vec<usize> = (0..chunk.len()).collect();
                order.sort_by(|&a, &b| chunk[b].abs().total_cmp(&chunk[a].abs()).then(a.cmp(&b)));
                let mut chosen: Vec<u32> = order[..chunk.len().min(top_k.k_per_chunk as usize)]
                    .iter()
                    .map(|&offset| (index * chunk_size + offset) as u32)
                    .collect();
                chosen.sort_unstable();
                expected.extend(chosen);
            }
            assert_eq!(select(&values, top_k), expected, "round {round}");
        }
    }

    #[test]
    fn the_vector_word_mask_is_the_portable_one() {
        let edges = [
            0.0,
            -0.0,
            f32::from_bits(1),
            1.0,
            -1.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let mut state = 3u64;
        let word: Vec<f32> = (0..32)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                edges
                    .get(i)
                    .copied()
                    .unwrap_or(f32::from_bits((state >> 32) as u32))
            })
            .collect();
        let floors = word
            .iter()
            .map(|&v| magnitude_key(v))
            .chain([0, 1, u32::MAX >> 1]);
        for floor in floors {
            let want = word_mask_portable(&word, floor);
            assert_eq!(word_mask(&word, floor), want, "floor {floor:#x}");
            let mut positions = Vec::new();
            let count = positions_at_least(&word, floor, &mut positions);
            let want: Vec<u32> = (0..32).filter(|bit| want >> bit & 1 == 1).collect();
            assert_eq!(positions[..count], want);
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
