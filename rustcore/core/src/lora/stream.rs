//! Writing a large decoded delta past the cache.
//!
//! An ordinary store first reads the line it writes into the cache (read for ownership), so
//! filling a buffer far larger than the cache moves every byte twice; non-temporal stores write
//! whole lines straight to memory. Measured on the 2-core Xeon the benchmark runs on: 64 MiB of
//! f32 filled at 8 GB/s with ordinary stores, 25 GB/s with streaming ones. Decoding is otherwise
//! bound by that write, so the decoders make each piece in a small buffer that stays in the L1
//! cache and stream it out from there.
//!
//! That holds for an output already in memory (a buffer the caller reuses). A new one (numpy's
//! `empty`, as `pyagent.lora.codecs.decode` makes) is not: each of its pages is zeroed by the
//! kernel on the first write to it, which leaves the page in the cache, where streaming stores
//! must first evict it. Measured on the same machine, decoding 16M values into a new array: FP16
//! 30 ms streamed, 22 ms with ordinary stores; INT8 28 and 17 ms. So only outputs whose pages are
//! mostly resident already are streamed.

/// Outputs at least this large are streamed. Below it the output is written in place: it may
/// fit in the cache, where the caller, which usually reads it next, finds it.
pub(super) const STREAMED_BYTES_MIN: usize = 4 << 20;

/// Fill `out` one piece of `piece_len` values at a time (the last piece may be shorter):
/// `fill(start, piece)` writes the values of `out[start..start + piece.len()]` into `piece`.
/// On an error the values of `out` are unspecified.
#[inline(always)]
pub(super) fn fill_in_pieces<E>(
    out: &mut [f32],
    piece_len: usize,
    mut fill: impl FnMut(usize, &mut [f32]) -> Result<(), E>,
) -> Result<(), E> {
    if !cfg!(target_arch = "x86_64")
        || std::mem::size_of_val(out) < STREAMED_BYTES_MIN
        || !mostly_resident(out)
    {
        for (index, piece) in out.chunks_mut(piece_len).enumerate() {
            fill(index * piece_len, piece)?;
        }
        return Ok(());
    }
    let mut staging = vec![0f32; piece_len.min(out.len())];
    let mut result = Ok(());
    for (index, piece) in out.chunks_mut(piece_len).enumerate() {
        let staged = &mut staging[..piece.len()];
        result = fill(index * piece_len, staged);
        if result.is_err() {
            break;
        }
        copy_streaming(staged, piece);
    }
    // Streaming stores are weakly ordered: fence them before the output is handed back.
    store_fence();
    result
}

/// Whether most pages of `out` are resident: written before (a new mapping's pages come in on
/// their first write). Where that cannot be asked, they are taken to be.
#[cfg(target_os = "linux")]
fn mostly_resident(out: &[f32]) -> bool {
    // SAFETY: `sysconf` only reads a constant of the system.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        page @ 1.. => page as usize,
        _ => return true,
    };
    let start = out.as_ptr() as usize / page * page;
    let len = out.as_ptr() as usize + std::mem::size_of_val(out) - start;
    let mut resident = vec![0u8; len.div_ceil(page)];
    // SAFETY: the range starts page-aligned (as `mincore` requires) and covers the pages of
    // `out`, which are mapped; `resident` holds one byte for each of them. `mincore` only reports.
    let status = unsafe { libc::mincore(start as *mut libc::c_void, len, resident.as_mut_ptr()) };
    status != 0 || 2 * resident.iter().filter(|&&page| page & 1 == 1).count() > resident.len()
}

#[cfg(not(target_os = "linux"))]
fn mostly_resident(_out: &[f32]) -> bool {
    true
}

/// `to.copy_from_slice(from)`, with non-temporal stores where `to` is 16-byte aligned.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn copy_streaming(from: &[f32], to: &mut [f32]) {
    use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
    assert_eq!(from.len(), to.len());
    let head = to.as_ptr().align_offset(16).min(to.len());
    to[..head].copy_from_slice(&from[..head]);
    let mut from_quads = from[head..].chunks_exact(4);
    let mut to_quads = to[head..].chunks_exact_mut(4);
    for (from_quad, to_quad) in (&mut from_quads).zip(&mut to_quads) {
        // SAFETY: both quads hold 4 f32; `to_quad` starts 16-byte aligned (from `head`, in
        // steps of 16 bytes), as `_mm_stream_ps` needs. SSE is part of every x86-64 CPU.
        unsafe { _mm_stream_ps(to_quad.as_mut_ptr(), _mm_loadu_ps(from_quad.as_ptr())) };
    }
    to_quads
        .into_remainder()
        .copy_from_slice(from_quads.remainder());
}

#[cfg(not(target_arch = "x86_64"))]
fn copy_streaming(from: &[f32], to: &mut [f32]) {
    to.copy_from_slice(from);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn store_fence() {
    // SAFETY: SSE is part of every x86-64 CPU, and a fence has no operands.
    unsafe { std::arch::x86_64::_mm_sfence() };
}

#[cfg(not(target_arch = "x86_64"))]
fn store_fence() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fill_the_whole_output_in_place_and_streamed() {
        for len in [1000, STREAMED_BYTES_MIN / 4 + 13] {
            // Offset by one value, so the streamed copy also meets an unaligned start.
            let mut buffer = vec![-1f32; len + 1];
            let out = &mut buffer[1..];
            fill_in_pieces::<()>(out, 96, |start, piece| {
                for (offset, value) in piece.iter_mut().enumerate() {
                    *value = (start + offset) as f32;
                }
                Ok(())
            })
            .unwrap();
            assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32), "{len}");
            assert_eq!(buffer[0], -1.0);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_new_large_buffer_is_resident_once_written() {
        // Large enough that the allocator maps it fresh, untouched.
        let mut out = vec![0f32; STREAMED_BYTES_MIN];
        assert!(!mostly_resident(&out));
        out.fill(1.0);
        assert!(mostly_resident(&out));
    }

    #[test]
    fn an_error_stops_the_filling() {
        let mut out = vec![0f32; STREAMED_BYTES_MIN / 4];
        let mut calls = 0;
        let result = fill_in_pieces(&mut out, 1024, |start, _| {
            calls += 1;
            if start >= 2048 {
                Err(start)
            } else {
                Ok(())
            }
        });
        assert_eq!((result, calls), (Err(2048), 3));
    }
}
