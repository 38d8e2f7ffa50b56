//! tollgate: an LLM API gateway for Linux edge nodes.
//!
//! Thread-per-core (monoio, io_uring), routing by the `model` in the JSON
//! body, OpenAI-compatible errors, and a built-in mock provider. See
//! `ARCHITECTURE.md` at the repository root for the data path.

pub mod alloc;
pub mod auth;
pub mod config;
pub mod error;
pub mod failover;
pub mod health;
pub mod http;
mod json_bytes;
pub mod ledger;
pub mod limits;
pub mod mock;
pub mod route;
pub mod server;
pub mod sse;
pub mod store_link;
mod sys;
pub mod telemetry;
pub mod text;
pub mod tokens;
pub mod upstream;
pub mod usage;

pub use sys::pin_to_cpu;
