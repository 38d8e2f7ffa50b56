//! Benchmarks live in `micro/` (criterion) and the load harness (later).
