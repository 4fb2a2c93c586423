//! The codec of a round, from the measured bandwidth: the most precise codec whose frame fits the
//! bytes the link moves within the round's time budget.

use super::{frame, Spec, TopK, ValueCodec, NDIM_MAX};

const fn dense(codec: ValueCodec, block_size: u32) -> Spec {
    Spec {
        codec,
        block_size,
        top_k: None,
    }
}

const fn top_k(k_per_chunk: u32) -> Spec {
    Spec {
        codec: ValueCodec::Int2,
        block_size: 64,
        top_k: Some(TopK {
            chunk_size: 4096,
            k_per_chunk,
        }),
    }
}

/// From most to least precise (bits per parameter, from the frame layout): FP16 16, INT8 8.125,
/// INT4 4.25, INT2 2.5, then 2-bit top-k in chunks of 4096 at about 10%, 3%, 1% and 0.2% density
/// (SparseLoCo's region: 1-3% with error feedback matches full precision).
pub const LADDER: [Spec; 8] = [
    dense(ValueCodec::Fp16, 256),
    dense(ValueCodec::Int8, 256),
    dense(ValueCodec::Int4, 128),
    dense(ValueCodec::Int2, 64),
    top_k(410),
    top_k(123),
    top_k(41),
    top_k(8),
];

/// The first spec of [`LADDER`] whose frame for `numel` values moves in `round_budget_s` at
/// `bandwidth_bytes_per_s`; the smallest one when none does (a round must still send something).
pub fn choose(bandwidth_bytes_per_s: f64, numel: u64, round_budget_s: f64) -> Spec {
    let budget_bytes = bandwidth_bytes_per_s.max(0.0) * round_budget_s.max(0.0);
    LADDER
        .into_iter()
        .find(|spec| frame::frame_len_max(spec, NDIM_MAX, numel) as f64 <= budget_bytes)
        .unwrap_or(LADDER[LADDER.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bandwidth_never_picks_a_coarser_codec() {
        let numel = 10_000_000;
        let mut previous = LADDER.len();
        for bandwidth in [1e3, 1e5, 1e6, 3e6, 1e7, 3e7, 1e8, 1e9] {
            let spec = choose(bandwidth, numel, 2.0);
            let rank = LADDER.iter().position(|s| *s == spec).unwrap();
            assert!(rank <= previous);
            previous = rank;
            if rank + 1 < LADDER.len() {
                assert!(frame::frame_len_max(&spec, NDIM_MAX, numel) as f64 <= bandwidth * 2.0);
            }
        }
        assert_eq!(choose(1e9, numel, 2.0), LADDER[0]);
        assert_eq!(choose(0.0, numel, 2.0), LADDER[LADDER.len() - 1]);
        assert_eq!(choose(f64::NAN, numel, 2.0), LADDER[LADDER.len() - 1]);
    }

    #[test]
    fn the_ladder_is_ordered_by_size() {
        let sizes: Vec<u64> = LADDER
            .iter()
            .map(|s| frame::frame_len_max(s, 1, 1 << 24))
            .collect();
        assert!(sizes.windows(2).all(|pair| pair[0] > pair[1]), "{sizes:?}");
    }
}
