//! Benchmark baselines (placeholder, being written).
