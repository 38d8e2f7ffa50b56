//! Benchmarks: criterion micro benches live in `micro/`; this library is
//! the load generator the side-by-side harness (`benches/run.sh`) drives.

pub mod loadgen;
pub mod probe;
