//! PyAgent core (placeholder until the pnet cipher lands).
