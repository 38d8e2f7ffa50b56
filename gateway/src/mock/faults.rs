//! Fault and shape controls of the mock: set for a whole instance from the
//! command line, overridden per request by `x-mock-*` headers.
//!
//! | header | flag | effect |
//! |---|---|---|
//! | `x-mock-status: 503` | `--status` | answer with this status and an OpenAI-shaped error |
//! | `x-mock-delay-ms: 200` | `--delay-ms` | wait before sending the response head |
//! | `x-mock-chunk-delay-ms: 20` | `--chunk-delay-ms` | wait between stream events (tokens: the usage chunk, `[DONE]` and the end of the body follow the finish event at once, as a provider sends them) |
//! | `x-mock-split: 1` | `--split` | write at most this many bytes per write |
//! | `x-mock-reset-after: 300` | `--reset-after` | send RST after this many response bytes |
//! | `x-mock-stall: 1` | `--stall` | never answer (until the client closes) |
//! | `x-mock-omit-usage: 1` | `--omit-usage` | no `usage` anywhere |
//! | `x-mock-crlf: 1` | `--crlf` | end SSE lines with CRLF instead of LF |
//! | `x-mock-echo: 1` | — | add the received headers to the JSON answer |

use std::time::Duration;

use crate::http::RequestHead;

/// The controls.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Status to answer with instead of a completion.
    pub status: Option<u16>,
    /// Delay before the response head.
    pub delay: Duration,
    /// Delay between stream events.
    pub chunk_delay: Duration,
    /// Bytes per write.
    pub split: Option<usize>,
    /// Reset the connection after this many response bytes.
    pub reset_after: Option<usize>,
    /// Never answer.
    pub stall: bool,
    /// Leave `usage` out.
    pub omit_usage: bool,
    /// Echo request headers in JSON answers.
    pub echo: bool,
    /// CRLF line endings in SSE.
    pub crlf: bool,
}

impl Faults {
    /// These controls with any `x-mock-*` headers of the request applied.
    pub fn with_headers(&self, buf: &[u8], head: &RequestHead) -> Faults {
        let mut f = self.clone();
        for (n, v) in &head.headers {
            let name = &buf[n.clone()];
            if name.len() < 7 || !name[..7].eq_ignore_ascii_case(b"x-mock-") {
                continue;
            }
            let key = name[7..].to_ascii_lowercase();
            let val = std::str::from_utf8(&buf[v.clone()]).unwrap_or("").trim();
            let num = val.parse::<u64>().ok();
            let flag = matches!(val, "1" | "true" | "yes");
            match key.as_slice() {
                b"status" => f.status = num.and_then(|n| u16::try_from(n).ok()),
                b"delay-ms" => f.delay = Duration::from_millis(num.unwrap_or(0)),
                b"chunk-delay-ms" => f.chunk_delay = Duration::from_millis(num.unwrap_or(0)),
                b"split" => f.split = num.map(|n| n.max(1) as usize),
                b"reset-after" => f.reset_after = num.map(|n| n as usize),
                b"stall" => f.stall = flag,
                b"omit-usage" => f.omit_usage = flag,
                b"echo" => f.echo = flag,
                b"crlf" => f.crlf = flag,
                _ => {}
            }
        }
        f
    }
}
