//! Error feedback: what a round did not send is added to the next round's delta, so nothing is
//! lost, only delayed. Keep one [`ErrorFeedback`] per destination (or stream): each carries its own
//! residual, because each destination received different frames.
//!
//! Invariant, after any rounds: the sum of the decoded frames plus the residual equals the sum of
//! the deltas given (to float rounding).

use super::{frame, CodecError, Rounding, Spec};

pub struct ErrorFeedback {
    shape: Vec<u64>,
    residual: Vec<f32>,
    // The accumulated delta of the round being encoded, then what its frame decodes to; kept so a
    // round allocates nothing of the delta's size.
    scratch: Vec<f32>,
}

impl ErrorFeedback {
    /// A zero residual for deltas of `shape`.
    pub fn new(shape: &[u64]) -> Result<Self, CodecError> {
        let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let numel = numel
            .filter(|&n| {
                !shape.is_empty() && shape.len() <= super::NDIM_MAX && n <= super::NUMEL_MAX
            })
            .ok_or_else(|| {
                CodecError::Invalid(format!("shape {shape:?} is not a delta's shape"))
            })?;
        Ok(Self {
            shape: shape.to_vec(),
            residual: vec![0.0; numel as usize],
            scratch: Vec::new(),
        })
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// What has not been sent yet.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Forget what was not sent (a destination that restarted from a fresh base).
    pub fn reset(&mut self) {
        self.residual.fill(0.0);
    }

    /// Encode `delta` plus the residual as one frame, and keep what the frame does not carry. On an
    /// error the residual is as it was.
    pub fn encode(
        &mut self,
        delta: &[f32],
        spec: &Spec,
        rounding: Rounding,
    ) -> Result<Vec<u8>, CodecError> {
        if delta.len() != self.residual.len() {
            return Err(CodecError::Invalid(format!(
                "delta has {} values, the residual {}",
                delta.len(),
                self.residual.len()
            )));
        }
        self.scratch.clear();
        self.scratch.extend(
            self.residual
                .iter()
                .zip(delta)
                .map(|(residual, value)| residual + value),
        );
        let encoded = frame::encode(&self.scratch, &self.shape, spec, rounding)?;
        std::mem::swap(&mut self.residual, &mut self.scratch);
        // Subtract what the receiver will read, decoded from the very bytes it gets.
        frame::decode_into(&encoded, &mut self.scratch).expect("a frame just encoded decodes");
        for (residual, sent) in self.residual.iter_mut().zip(&self.scratch) {
            *residual -= sent;
        }
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TopK, ValueCodec};
    use super::*;

    #[test]
    fn what_was_sent_plus_the_residual_is_what_was_given() {
        let spec = Spec {
            codec: ValueCodec::Int2,
            block_size: 64,
            top_k: Some(TopK {
                chunk_size: 128,
                k_per_chunk: 4,
            }),
        };
        let mut feedback = ErrorFeedback::new(&[4, 256]).unwrap();
        let mut given = vec![0f64; 1024];
        let mut sent = vec![0f64; 1024];
        for round in 0..20u64 {
            let delta: Vec<f32> = (0..1024)
                .map(|i| ((i * 31 + round * 17) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let frame = feedback
                .encode(&delta, &spec, Rounding::Stochastic { seed: round })
                .unwrap();
            let (_, values) = frame::decode(&frame, 1024).unwrap();
            for i in 0..1024 {
                given[i] += f64::from(delta[i]);
                sent[i] += f64::from(values[i]);
            }
        }
        for i in 0..1024 {
            let total = sent[i] + f64::from(feedback.residual()[i]);
            assert!(
                (total - given[i]).abs() < 1e-4,
                "{i}: {total} vs {}",
                given[i]
            );
        }
    }

    #[test]
    fn a_refused_delta_leaves_the_residual_alone() {
        let spec = Spec {
            codec: ValueCodec::Int8,
            block_size: 8,
            top_k: None,
        };
        let mut feedback = ErrorFeedback::new(&[8]).unwrap();
        feedback
            .encode(&[0.3; 8], &spec, Rounding::Nearest)
            .unwrap();
        let before = feedback.residual().to_vec();
        assert!(feedback
            .encode(&[f32::NAN; 8], &spec, Rounding::Nearest)
            .is_err());
        assert!(feedback
            .encode(&[0.0; 7], &spec, Rounding::Nearest)
            .is_err());
        assert_eq!(feedback.residual(), before.as_slice());
    }
}
