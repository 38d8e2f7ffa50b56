//! Server-sent events on the response path: `scanner` splits the payload
//! stream into events (WHATWG HTML §9.2 "server-sent events"), `decode`
//! pulls what accounting needs out of OpenAI event data.
//!
//! Both are pure: they look at the bytes the relay forwards and never own
//! or copy the stream except for the bounded carry-over of one event split
//! across reads.

pub mod decode;
pub mod deferred;
mod fast;
mod hold;
pub mod scanner;

pub use decode::{Decoded, Usage, decode};
pub use scanner::{Event, Scanner};
