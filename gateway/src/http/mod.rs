//! HTTP/1.1 pieces that do no I/O: request heads, chunked coding, header
//! rules, and response heads (including OpenAI-shaped error responses).

pub mod chunked;
pub mod headers;
pub mod name;
pub mod request;
pub mod response;

pub use request::{BodyFraming, Method, RequestHead};
