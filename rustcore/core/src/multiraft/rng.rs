//! The driver's own random numbers, so that a seed replays the same elections.
//!
//! SplitMix64 is enough here: it only spreads election timeouts, and it needs no dependency.

#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one replica: different groups and nodes draw different streams even
    /// when the caller hands every node the same seed.
    pub fn for_replica(seed: u64, group_id: u64, node_id: u64) -> Self {
        let mut mixer = Self::new(seed);
        let a = mixer.next_u64();
        let mut mixer = Self::new(a ^ group_id);
        let b = mixer.next_u64();
        Self::new(b ^ node_id.rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[low, high)`; `high > low`.
    pub fn below(&mut self, low: usize, high: usize) -> usize {
        low + (self.next_u64() % (high - low) as u64) as usize
    }
}
