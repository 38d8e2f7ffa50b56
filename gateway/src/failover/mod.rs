//! Failover: what went wrong with an attempt (`class`), whether a target
//! may be called (`breaker`), and which fallback a failure leads to
//! (`condition`).
//!
//! # Failure behavior
//! Breakers are per node, shared through Redis when `[store] kind =
//! "redis"` (`shared`); they start closed on restart. A wrong decision
//! fails open (the target is tried), never closed for longer than the
//! configured break.

pub mod breaker;
pub mod class;
pub mod condition;
pub mod plan;
pub mod shared;

pub use breaker::{Breaker, BreakerConfig, Permit, State, Transition, now_ms};
pub use class::{Class, Effect, FailureCounts};
pub use condition::{Cond, Outcome};
