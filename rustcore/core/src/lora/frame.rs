//! The frame: one delta, self-describing and checked.
//!
//! ```text
//! offset size  field
//! 0      4     magic "PYLD"
//! 4      1     version (1)
//! 5      1     codec: 0 fp16, 1 int8, 2 int4, 3 int2
//! 6      1     dtype of the decoded values: 1 float32 (the only one)
//! 7      1     ndim, 1..=8
//! 8      4     block_size (values per scale), 8..=65536
//! 12     4     chunk_size of top-k, 0 when dense, else 8..=65536
//! 16     4     k_per_chunk, 0 when dense, else 1..=chunk_size
//! 20     8*nd  shape, u64 each; at most 2^32 values in all
//! ..     8     payload_len
//! ..     *     payload: when sparse, one index section per chunk (see `sparse`); then the kept
//!              values (see `quant`)
//! ..     32    BLAKE3 of every byte before it
//! ```
//! All integers little-endian. A decoder reads every length against the bytes it holds before it
//! trusts it, and sizes every allocation from lengths it checked.

use super::{
    fp16, malformed, quant, sparse, stream, CodecError, Rounding, Spec, TopK, ValueCodec, NDIM_MAX,
    NUMEL_MAX,
};
use crate::hashing::{digest, Digest, DIGEST_LEN_BYTES};
use std::borrow::Cow;

pub const MAGIC: [u8; 4] = *b"PYLD";
pub const VERSION: u8 = 1;
const DTYPE_F32: u8 = 1;
const FIXED_HEADER_LEN_BYTES: usize = 20;
/// Bytes written, then hashed, at a time by the dense FP16 writer (and hashed, then read, by its
/// reader): well inside the L2 cache.
const HASHED_PIECE_LEN_BYTES: usize = 64 << 10;

/// What a frame says about the delta it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub spec: Spec,
    pub shape: Vec<u64>,
}

impl Header {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The frame's size in bytes for `numel` values, at most (index sections vary below this bound).
pub fn frame_len_max(spec: &Spec, ndim: usize, numel: u64) -> u64 {
    let fixed = (FIXED_HEADER_LEN_BYTES + 8 * ndim + 8 + DIGEST_LEN_BYTES) as u64;
    let kept = spec.kept(numel);
    let values = quant::encoded_len(spec.codec, spec.block_size, kept as usize) as u64;
    let indices = spec.top_k.map_or(0, |top_k| {
        let chunk = u64::from(top_k.chunk_size);
        let full = numel / chunk
            * sparse::index_section_len_max(top_k.chunk_size, top_k.k_per_chunk) as u64;
        let tail = numel % chunk;
        let tail_section = if tail == 0 {
            0
        } else {
            sparse::index_section_len_max(tail as u32, top_k.k_per_chunk.min(tail as u32)) as u64
        };
        full + tail_section
    });
    fixed + indices + values
}

/// A frame whose bytes are decided but not yet written: its exact length is known first, so a
/// caller can write it straight into its final buffer (the binding: a Python bytes object)
/// instead of copying it there.
pub struct Prepared<'a> {
    /// The header and, when sparse, the index sections: every byte before the values.
    head: Vec<u8>,
    /// The values to quantize: all of them, or the kept ones.
    values: Cow<'a, [f32]>,
    spec: Spec,
    rounding: Rounding,
}

impl Prepared<'_> {
    /// The frame's length in bytes.
    pub fn frame_len(&self) -> usize {
        self.head.len() + self.values_len() + DIGEST_LEN_BYTES
    }

    fn values_len(&self) -> usize {
        quant::encoded_len(self.spec.codec, self.spec.block_size, self.values.len())
    }

    /// Write the frame to `frame`, which is exactly [`Self::frame_len`] bytes long. Fails on
    /// values the codec cannot carry (non-finite ones, or beyond FP16's range).
    ///
    /// Every byte of `frame` is written before any is read, so `frame` may hold anything when
    /// it comes in: the binding hands over a new bytes object's buffer without zeroing it.
    pub fn write(&self, frame: &mut [u8]) -> Result<(), CodecError> {
        assert_eq!(frame.len(), self.frame_len());
        let (body, hash) = frame.split_at_mut(frame.len() - DIGEST_LEN_BYTES);
        let (head, values) = body.split_at_mut(self.head.len());
        head.copy_from_slice(&self.head);
        if self.spec.codec == ValueCodec::Fp16 && self.spec.top_k.is_none() {
            hash.copy_from_slice(&self.write_dense_fp16(body)?);
            return Ok(());
        }
        self.encode_values(&self.values, values)?;
        hash.copy_from_slice(&digest(body));
        Ok(())
    }

    fn encode_values(&self, values: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
        let spec = self.spec;
        quant::encode(values, spec.codec, spec.block_size, self.rounding, out)
    }

    /// Write the values of a dense FP16 frame after its head, and return the body's digest.
    ///
    /// Dense FP16 frames are the largest, and their values are written 2 bytes each, in order:
    /// each piece is hashed right after it is written, while it is in the cache, instead of in a
    /// second pass over the whole frame (10% of the encode). The pieces are whole multiples of
    /// the hasher's 1 KiB chunks from the frame's start: fed at other boundaries it slowed down.
    fn write_dense_fp16(&self, body: &mut [u8]) -> Result<Digest, CodecError> {
        let values_at = self.head.len();
        assert_eq!(values_at % 2, 0, "a dense header is whole halves");
        let mut hasher = blake3::Hasher::new();
        for (index, piece) in body.chunks_mut(HASHED_PIECE_LEN_BYTES).enumerate() {
            let start = index * HASHED_PIECE_LEN_BYTES;
            if start + piece.len() > values_at {
                let head_bytes = values_at.saturating_sub(start);
                let first = (start + head_bytes - values_at) / 2;
                let halves = &mut piece[head_bytes..];
                self.encode_values(&self.values[first..first + halves.len() / 2], halves)?;
            }
            hasher.update(piece);
        }
        Ok(*hasher.finalize().as_bytes())
    }
}

/// Decide the frame of `values` (row-major, of `shape`): check the arguments and, when sparse,
/// select the kept values and code their positions.
pub fn prepare<'a>(
    values: &'a [f32],
    shape: &[u64],
    spec: &Spec,
    rounding: Rounding,
) -> Result<Prepared<'a>, CodecError> {
    spec.validate()?;
    if shape.is_empty() || shape.len() > NDIM_MAX {
        return Err(CodecError::Invalid(format!(
            "shape must have 1..={NDIM_MAX} dimensions, got {}",
            shape.len()
        )));
    }
    let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    if numel != Some(values.len() as u64) || values.len() as u64 > NUMEL_MAX {
        return Err(CodecError::Invalid(format!(
            "shape {shape:?} does not describe {} values (at most {NUMEL_MAX})",
            values.len()
        )));
    }
    // The frame's bound less its values and hash: the header and the index sections, at most.
    let numel = values.len() as u64;
    let values_len = quant::encoded_len(spec.codec, spec.block_size, spec.kept(numel) as usize);
    let mut head = Vec::with_capacity(
        frame_len_max(spec, shape.len(), numel) as usize - values_len - DIGEST_LEN_BYTES,
    );
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&[
        VERSION,
        spec.codec.wire_code(),
        DTYPE_F32,
        shape.len() as u8,
    ]);
    let (chunk_size, k_per_chunk) = spec.top_k.map_or((0, 0), |t| (t.chunk_size, t.k_per_chunk));
    for field in [spec.block_size, chunk_size, k_per_chunk] {
        head.extend_from_slice(&field.to_le_bytes());
    }
    for &dim in shape {
        head.extend_from_slice(&dim.to_le_bytes());
    }
    let payload_len_at = head.len();
    head.extend_from_slice(&0u64.to_le_bytes());
    let payload_start = head.len();
    let values = match spec.top_k {
        None => Cow::Borrowed(values),
        Some(top_k) => {
            // Chunk by chunk, while the chunk is in the cache: select, code the positions,
            // gather the kept values.
            let mut selector = sparse::Selector::new(top_k.k_per_chunk);
            let mut positions = Vec::with_capacity(top_k.k_per_chunk as usize);
            let mut kept = Vec::with_capacity(spec.kept(numel) as usize);
            for chunk in values.chunks(top_k.chunk_size as usize) {
                positions.clear();
                selector.select(chunk, &mut positions);
                sparse::encode_indices(&positions, chunk.len() as u32, &mut head);
                kept.extend(positions.iter().map(|&p| chunk[p as usize]));
            }
            Cow::Owned(kept)
        }
    };
    let mut prepared = Prepared {
        head,
        values,
        spec: *spec,
        rounding,
    };
    let payload_len = (prepared.head.len() - payload_start + prepared.values_len()) as u64;
    prepared.head[payload_len_at..payload_start].copy_from_slice(&payload_len.to_le_bytes());
    Ok(prepared)
}

/// Encode `values` (row-major, of `shape`) as one frame.
pub fn encode(
    values: &[f32],
    shape: &[u64],
    spec: &Spec,
    rounding: Rounding,
) -> Result<Vec<u8>, CodecError> {
    let prepared = prepare(values, shape, spec, rounding)?;
    let mut frame = vec![0; prepared.frame_len()];
    prepared.write(&mut frame)?;
    Ok(frame)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Check a frame's header, length and hash, and return the header and the payload. `numel_max`
/// is the caller's own limit on the values it will take.
pub fn read_header(frame: &[u8], numel_max: u64) -> Result<(Header, &[u8]), CodecError> {
    parse_header(frame, numel_max, Hash::Checked)
}

/// Check a frame's header and length, not its hash, and return the header: enough to size the
/// output of [`decode_into`], which checks the hash itself. Hashing here too would read a dense
/// frame twice.
pub fn peek_header(frame: &[u8], numel_max: u64) -> Result<Header, CodecError> {
    parse_header(frame, numel_max, Hash::LeftToCaller).map(|(header, _)| header)
}

/// Whether [`parse_header`] checks the frame's hash, or its caller does, later.
#[derive(PartialEq)]
enum Hash {
    Checked,
    LeftToCaller,
}

fn parse_header(frame: &[u8], numel_max: u64, hash: Hash) -> Result<(Header, &[u8]), CodecError> {
    if frame.len() < FIXED_HEADER_LEN_BYTES + 8 + 8 + DIGEST_LEN_BYTES {
        return malformed(format!("{} bytes is shorter than any frame", frame.len()));
    }
    if frame[..4] != MAGIC {
        return malformed("bad magic");
    }
    if frame[4] != VERSION {
        return malformed(format!("version {} (this peer reads {VERSION})", frame[4]));
    }
    let Some(codec) = ValueCodec::from_wire_code(frame[5]) else {
        return malformed(format!("unknown codec {}", frame[5]));
    };
    if frame[6] != DTYPE_F32 {
        return malformed(format!("unknown dtype {}", frame[6]));
    }
    let ndim = frame[7] as usize;
    if !(1..=NDIM_MAX).contains(&ndim) {
        return malformed(format!("ndim {ndim} outside 1..={NDIM_MAX}"));
    }
    let payload_at = FIXED_HEADER_LEN_BYTES + 8 * ndim + 8;
    if frame.len() < payload_at + DIGEST_LEN_BYTES {
        return malformed("header cut short");
    }
    let body = &frame[..frame.len() - DIGEST_LEN_BYTES];
    if hash == Hash::Checked {
        check_hash(frame, digest(body))?;
    }
    let (chunk_size, k_per_chunk) = (u32_at(frame, 12), u32_at(frame, 16));
    let top_k = match (chunk_size, k_per_chunk) {
        (0, 0) => None,
        _ => Some(TopK {
            chunk_size,
            k_per_chunk,
        }),
    };
    let spec = Spec {
        codec,
        block_size: u32_at(frame, 8),
        top_k,
    };
    spec.validate()
        .map_err(|error| CodecError::Malformed(error.to_string()))?;
    let shape: Vec<u64> = (0..ndim)
        .map(|i| u64_at(frame, FIXED_HEADER_LEN_BYTES + 8 * i))
        .collect();
    let limit = numel_max.min(NUMEL_MAX);
    let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    let Some(numel) = numel.filter(|&n| n <= limit) else {
        return malformed(format!("shape {shape:?} holds more than {limit} values"));
    };
    let payload_len = u64_at(frame, payload_at - 8);
    let payload = &body[payload_at..];
    if payload_len != payload.len() as u64 {
        return malformed(format!(
            "payload_len {payload_len}, but {} bytes follow",
            payload.len()
        ));
    }
    // Before anything is sized from `numel`: its values must fit the bytes that came. Each chunk
    // takes at least its mode byte, so a small sparse frame cannot claim a huge delta either.
    let chunks = top_k.map_or(0, |t| numel.div_ceil(u64::from(t.chunk_size)));
    let values_len = quant::encoded_len(codec, spec.block_size, spec.kept(numel) as usize) as u64;
    if chunks + values_len > payload_len {
        return malformed(format!(
            "{payload_len} payload bytes cannot hold {numel} values"
        ));
    }
    Ok((Header { spec, shape }, payload))
}

/// Refuse `frame` unless its last bytes are `body_digest`, the digest of the bytes before them.
fn check_hash(frame: &[u8], body_digest: Digest) -> Result<(), CodecError> {
    if frame[frame.len() - DIGEST_LEN_BYTES..] != body_digest {
        return malformed("BLAKE3 hash does not match");
    }
    Ok(())
}

/// Decode a frame into `out`, which must hold exactly the frame's number of values.
///
/// On an error the values of `out` are unspecified: a dense FP16 frame is hashed while it is
/// decoded, so a frame whose hash does not match may have written `out` before it is refused.
pub fn decode_into(frame: &[u8], out: &mut [f32]) -> Result<Header, CodecError> {
    // Any other frame, and one whose header is refused or does not fit `out`, is hashed first,
    // so a damaged frame is reported as malformed rather than as a caller's wrong `out`.
    if let Ok((header, payload)) = parse_header(frame, out.len() as u64, Hash::LeftToCaller) {
        let dense_fp16 = header.spec.codec == ValueCodec::Fp16 && header.spec.top_k.is_none();
        if dense_fp16 && header.numel() == out.len() as u64 {
            decode_dense_fp16(frame, payload, header.spec.block_size, out)?;
            return Ok(header);
        }
    }
    let (header, payload) = read_header(frame, out.len() as u64)?;
    if header.numel() != out.len() as u64 {
        return Err(CodecError::Invalid(format!(
            "the frame holds {} values, the output {}",
            header.numel(),
            out.len()
        )));
    }
    let spec = header.spec;
    let Some(top_k) = spec.top_k else {
        quant::decode(payload, spec.codec, spec.block_size, out)?;
        return Ok(header);
    };
    let kept = spec.kept(header.numel()) as usize;
    let mut positions = Vec::with_capacity(kept);
    let mut cursor = 0;
    let chunk = top_k.chunk_size as usize;
    for base in (0..out.len()).step_by(chunk) {
        let chunk_len = chunk.min(out.len() - base) as u32;
        let k = top_k.k_per_chunk.min(chunk_len);
        sparse::decode_indices(
            payload,
            &mut cursor,
            chunk_len,
            k,
            base as u32,
            &mut positions,
        )?;
    }
    let mut values = vec![0f32; kept];
    quant::decode(&payload[cursor..], spec.codec, spec.block_size, &mut values)?;
    // Chunk by chunk: each chunk's kept values are the next `min(k, its length)` of `values`.
    let mut kept = positions.iter().zip(&values);
    stream::fill_in_pieces(out, chunk, |start, piece| {
        piece.fill(0.0);
        let k = top_k.k_per_chunk.min(piece.len() as u32) as usize;
        for (&position, &value) in kept.by_ref().take(k) {
            piece[position as usize - start] = value;
        }
        Ok(())
    })?;
    Ok(header)
}

/// Decode the values of a dense FP16 frame whose header was read, and check its hash.
///
/// The mirror of [`Prepared::write_dense_fp16`]: each piece of the frame is hashed just before
/// its halves are read, while it is in the cache, instead of in a pass of its own over the
/// whole frame before decoding. The hasher is fed the same whole pieces from the frame's start.
/// A bad hash is reported before values FP16 does not allow.
fn decode_dense_fp16(
    frame: &[u8],
    payload: &[u8],
    block_size: u32,
    out: &mut [f32],
) -> Result<(), CodecError> {
    quant::check_encoded_len(payload, ValueCodec::Fp16, block_size, out.len())?;
    let body = &frame[..frame.len() - DIGEST_LEN_BYTES];
    let payload_at = body.len() - payload.len();
    let mut hasher = blake3::Hasher::new();
    let mut hashed = 0;
    let mut hash_to = |end: usize| {
        while hashed < end {
            let piece_end = (hashed + HASHED_PIECE_LEN_BYTES).min(body.len());
            hasher.update(&body[hashed..piece_end]);
            hashed = piece_end;
        }
    };
    let values = fp16::decode_following(payload, out, |reading| hash_to(payload_at + reading.end));
    hash_to(body.len());
    check_hash(frame, *hasher.finalize().as_bytes())?;
    values
}

/// Decode a frame of at most `numel_max` values into a new buffer.
pub fn decode(frame: &[u8], numel_max: u64) -> Result<(Header, Vec<f32>), CodecError> {
    let header = peek_header(frame, numel_max)?;
    let mut out = vec![0f32; header.numel() as usize];
    decode_into(frame, &mut out)?;
    Ok((header, out))
}

#[cfg(test)]
mod tests {
    use super::super::stream::STREAMED_BYTES_MIN;
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn specs() -> Vec<Spec> {
        let mut specs = Vec::new();
        for codec in ValueCodec::ALL {
            specs.push(Spec {
                codec,
                block_size: 64,
                top_k: None,
            });
            specs.push(Spec {
                codec,
                block_size: 32,
                top_k: Some(TopK {
                    chunk_size: 256,
                    k_per_chunk: 5,
                }),
            });
        }
        specs
    }

    const DENSE_FP16: Spec = Spec {
        codec: ValueCodec::Fp16,
        block_size: 64,
        top_k: None,
    };

    #[test]
    fn every_codec_round_trips_and_stays_within_its_size_bound() {
        let values = sample(3000);
        for spec in specs() {
            let frame = encode(&values, &[30, 100], &spec, Rounding::Nearest).unwrap();
            assert!(
                frame.len() as u64 <= frame_len_max(&spec, 2, 3000),
                "{spec:?}"
            );
            let (header, back) = decode(&frame, 3000).unwrap();
            assert_eq!(
                header,
                Header {
                    spec,
                    shape: vec![30, 100]
                }
            );
            let sent = back.iter().filter(|v| **v != 0.0).count();
            if spec.top_k.is_some() {
                assert!(sent <= 12 * 5, "{spec:?} sent {sent}");
            }
            for (x, y) in values.iter().zip(&back) {
                if *y != 0.0 {
                    assert!((x - y).abs() <= 0.51, "{spec:?}: {x} -> {y}");
                }
            }
        }
    }

    #[test]
    fn write_sets_every_byte_whatever_the_buffer_held() {
        // Dense FP16 over several hashed pieces, the last one partial, and every other codec
        // dense and sparse, at a length that ends blocks and chunks part-way.
        let long = sample(3 * HASHED_PIECE_LEN_BYTES / 2 + 1001);
        let short = sample(3001);
        let cases =
            std::iter::once((DENSE_FP16, &long)).chain(specs().into_iter().map(|s| (s, &short)));
        for (spec, values) in cases {
            let prepared =
                prepare(values, &[values.len() as u64], &spec, Rounding::Nearest).unwrap();
            // A byte left unwritten would differ between the three fillings.
            let frames = [0x00, 0xa5, 0xff].map(|fill| {
                let mut frame = vec![fill; prepared.frame_len()];
                prepared.write(&mut frame).unwrap();
                frame
            });
            assert!(frames.iter().all(|frame| *frame == frames[0]), "{spec:?}");
        }
    }

    #[test]
    fn a_dense_fp16_frame_hashed_piece_by_piece_is_the_frame_hashed_whole() {
        let spec = DENSE_FP16;
        // Several pieces, the last one partial, behind heads of two lengths.
        let values = sample(3 * HASHED_PIECE_LEN_BYTES / 2 + 1001);
        for shape in [vec![values.len() as u64], vec![1, 1, values.len() as u64]] {
            let frame = encode(&values, &shape, &spec, Rounding::Nearest).unwrap();
            let (body, hash) = frame.split_at(frame.len() - DIGEST_LEN_BYTES);
            assert_eq!(digest(body), hash);
            let mut halves = vec![0; 2 * values.len()];
            quant::encode(&values, spec.codec, 64, Rounding::Nearest, &mut halves).unwrap();
            assert_eq!(body[body.len() - halves.len()..], halves);
        }
        // A value FP16 cannot carry, in the last piece, is refused.
        let mut too_large = values.clone();
        *too_large.last_mut().unwrap() = 1e6;
        let refused = encode(&too_large, &[values.len() as u64], &spec, Rounding::Nearest);
        assert!(matches!(refused, Err(CodecError::Invalid(_))));
    }

    #[test]
    fn a_dense_fp16_frame_hashed_while_decoded_decodes_as_after_hashing() {
        // One value, a few, less than a hashed piece, several pieces with a partial last one,
        // and past the streaming threshold; behind heads of two lengths.
        let lengths = [
            1,
            7,
            4095,
            3 * HASHED_PIECE_LEN_BYTES / 2 + 1001,
            STREAMED_BYTES_MIN / 4 + 13,
        ];
        for len in lengths {
            let values = sample(len);
            for shape in [vec![len as u64], vec![1, len as u64, 1]] {
                let frame = encode(&values, &shape, &DENSE_FP16, Rounding::Nearest).unwrap();
                let mut fused = vec![f32::NAN; len];
                assert_eq!(decode_into(&frame, &mut fused).unwrap().shape, shape);
                let (_, payload) = read_header(&frame, len as u64).unwrap();
                let mut unfused = vec![f32::NAN; len];
                quant::decode(payload, ValueCodec::Fp16, 64, &mut unfused).unwrap();
                let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert!(bits(&fused) == bits(&unfused), "{len} values in {shape:?}");
            }
        }
    }

    #[test]
    fn a_dense_fp16_frame_hashed_while_decoded_is_refused_for_a_bad_hash() {
        let len = 3 * HASHED_PIECE_LEN_BYTES / 2 + 1001;
        let frame = encode(&sample(len), &[len as u64], &DENSE_FP16, Rounding::Nearest).unwrap();
        let mut out = vec![0f32; len];
        let hash_error = Err(CodecError::Malformed("BLAKE3 hash does not match".into()));
        // A value in the first and in the last piece, and the hash itself.
        for at in [100, frame.len() - DIGEST_LEN_BYTES - 1, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode_into(&bad, &mut out), hash_error, "byte {at}");
        }
        // A NaN: the damaged frame is reported as such; with its hash made good, the NaN.
        let mut nan = frame.clone();
        let last_half = frame.len() - DIGEST_LEN_BYTES - 2;
        nan[last_half..last_half + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        assert_eq!(decode_into(&nan, &mut out), hash_error);
        let hash = digest(&nan[..frame.len() - DIGEST_LEN_BYTES]);
        nan[frame.len() - DIGEST_LEN_BYTES..].copy_from_slice(&hash);
        assert!(
            matches!(decode_into(&nan, &mut out), Err(CodecError::Malformed(m)) if m.contains("NaN"))
        );
    }

    #[test]
    fn a_streamed_sparse_decode_is_the_decodes_of_its_chunks() {
        // One block of kept values a chunk, so a chunk alone encodes to the same values; the
        // output is past the streaming threshold, and its last chunk is short.
        let spec = Spec {
            codec: ValueCodec::Int4,
            block_size: 64,
            top_k: Some(TopK {
                chunk_size: 4096,
                k_per_chunk: 64,
            }),
        };
        let len = STREAMED_BYTES_MIN / 4 + 4096 + 100;
        let values = sample(len);
        let frame = encode(&values, &[len as u64], &spec, Rounding::Nearest).unwrap();
        let mut whole = vec![1f32; len];
        decode_into(&frame, &mut whole).unwrap();
        for (chunk, got) in values.chunks(4096).zip(whole.chunks(4096)) {
            let frame = encode(chunk, &[chunk.len() as u64], &spec, Rounding::Nearest).unwrap();
            let (_, want) = decode(&frame, chunk.len() as u64).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn decoders_refuse_every_flipped_bit_and_every_cut() {
        let values = sample(300);
        for spec in specs() {
            let frame = encode(&values, &[300], &spec, Rounding::Nearest).unwrap();
            let mut out = vec![0f32; 300];
            for at in 0..frame.len() {
                let mut bad = frame.clone();
                bad[at] ^= 1 << (at % 8);
                assert!(decode_into(&bad, &mut out).is_err(), "{spec:?} byte {at}");
                assert!(decode_into(&frame[..at], &mut out).is_err());
                // With its hash made good again, the bad field itself must be refused or decode
                // to something; it must never panic.
                let body = bad.len() - DIGEST_LEN_BYTES;
                let hash = digest(&bad[..body]);
                bad[body..].copy_from_slice(&hash);
                let _ = decode_into(&bad, &mut out);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 1u64;
        let mut out = vec![0f32; 64];
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 200)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            assert!(decode_into(&bytes, &mut out).is_err());
        }
    }

    #[test]
    fn a_frame_that_claims_more_values_than_allowed_is_refused_before_allocation() {
        let frame = encode(&[1.0; 16], &[16], &specs()[0], Rounding::Nearest).unwrap();
        assert!(decode(&frame, 15).is_err());
        assert!(matches!(
            encode(&[1.0; 16], &[4, 5], &specs()[0], Rounding::Nearest),
            Err(CodecError::Invalid(_))
        ));
    }
}
