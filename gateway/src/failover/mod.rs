//! Failover: what went wrong with an attempt (`class`), whether a target
//! may be called (`breaker`), and which fallback a failure leads to
//! (`condition`).
//!
//! # Failure behavior
//! Breakers are in-process state; they start closed and are rebuilt on
//! restart. A wrong decision fails open (the target is tried), never
//! closed for longer than the configured break.

pub mod breaker;
pub mod class;
pub mod condition;
pub mod plan;

pub use breaker::{Breaker, BreakerConfig, Permit, State, Transition, now_ms};
pub use class::{Class, Effect, FailureCounts};
pub use condition::{Cond, Outcome};
