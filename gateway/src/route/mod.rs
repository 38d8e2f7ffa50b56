//! Routing: from a request body to the target that serves it.
//!
//! `extract` finds the top-level model in the raw body, `table` maps the
//! name to a route (exact, alias, glob), `wrr` picks a target by weight
//! (per worker), and `rewrite` produces the body sent upstream when the
//! target renames the model.

pub mod extract;
pub mod glob;
pub mod rewrite;
pub mod table;
pub mod wrr;

pub use extract::{BodyInfo, ExtractError, extract};
pub use table::{Fallback, ModelSpec, Price, Route, RouteId, RouteTable, Target, UpstreamId};
pub use wrr::Picker;
