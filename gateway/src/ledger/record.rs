//! The ledger's own copy of a usage record, the batch it travels in, and
//! the day a record is booked on.
//!
//! A batch is the unit of idempotency: `(stream, seq)` names it for ever.
//! The writer thread owns one stream per process (`{instance}-m`), each
//! worker that spills to disk owns one stream per spill file
//! (`{instance}-o{n}`); within a stream `seq` only grows, and batches
//! reach the store in `seq` order (see `writer.rs`), so the store keeps
//! one high-water mark per stream and skips anything at or below it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::text::Text;
use crate::usage::{Source, UsageRecord};

/// Tenant of records without one (no auth configured).
pub const NO_TENANT: &str = "-";

/// One request's billable usage, owned (it crosses threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    /// Request id (the idempotency of audit entries rests on the batch).
    pub request_id: Text,
    /// Key id, `-` when none.
    pub key_id: Option<Arc<str>>,
    /// Tenant, `-` when none.
    pub tenant: Option<Arc<str>>,
    /// Model the client asked for.
    pub model: Text,
    /// Model sent upstream; counters are kept per served model.
    pub served: Arc<str>,
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Price in micro-dollars.
    pub cost_micros: u64,
    /// Status sent to the client.
    pub status: u16,
    /// Wall clock at the end of the request, ms since the Unix epoch.
    pub at_ms: u64,
    /// Bit 0: prompt estimated; bit 1: completion estimated.
    pub est: u8,
    /// Streaming request.
    pub stream: bool,
}

impl Rec {
    /// Copies what the ledger needs out of a record finished at `at_ms`.
    pub fn from_usage(r: &UsageRecord, at_ms: u64) -> Rec {
        let est = u8::from(r.prompt_source == Source::Estimated)
            | (u8::from(r.completion_source == Source::Estimated) << 1);
        Rec {
            request_id: r.request_id.clone(),
            key_id: r.key_id.clone(),
            tenant: r.tenant.clone(),
            model: r.requested_model.clone(),
            served: r.served_model.clone(),
            upstream: r.upstream.clone(),
            prompt: r.prompt_tokens,
            completion: r.completion_tokens,
            cost_micros: r.cost_micros,
            status: r.status,
            at_ms,
            est,
            stream: r.stream,
        }
    }

    /// Tenant the record is booked under.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(NO_TENANT)
    }

    /// Days since the Unix epoch (UTC) the record is booked on.
    pub fn day(&self) -> u32 {
        (self.at_ms / 86_400_000) as u32
    }

    /// `est` as a word for the audit stream.
    pub fn est_name(&self) -> &'static str {
        match self.est & 3 {
            0 => "none",
            1 => "prompt",
            2 => "completion",
            _ => "both",
        }
    }
}

/// Records that reach the store together, named by `(stream, seq)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Dedupe stream.
    pub stream: Arc<str>,
    /// Position in the stream, from 1.
    pub seq: u64,
    /// The records.
    pub recs: Vec<Rec>,
}

/// Wire shape of one record in a spool line (a JSON array keeps lines short).
type RecTuple = (
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    u64,
    u64,
    u64,
    u16,
    u64,
    u8,
    bool,
);

/// Borrowed form of [`RecTuple`].
type RecRef<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
    u64,
    u64,
    u64,
    u16,
    u64,
    u8,
    bool,
);

#[derive(Serialize)]
struct LineOut<'a> {
    s: &'a str,
    q: u64,
    r: Vec<RecRef<'a>>,
}

#[derive(Deserialize)]
struct LineIn {
    s: String,
    q: u64,
    r: Vec<RecTuple>,
}

impl Batch {
    /// Appends the batch as one JSON line (with its `\n`) to `out`.
    pub fn encode_line(&self, out: &mut Vec<u8>) {
        let line = LineOut {
            s: &self.stream,
            q: self.seq,
            r: self
                .recs
                .iter()
                .map(|r| {
                    (
                        &*r.request_id,
                        r.key_id.as_deref(),
                        r.tenant.as_deref(),
                        &*r.model,
                        &*r.served,
                        &*r.upstream,
                        r.prompt,
                        r.completion,
                        r.cost_micros,
                        r.status,
                        r.at_ms,
                        r.est,
                        r.stream,
                    )
                })
                .collect(),
        };
        // Writing plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }

    /// Parses one line (without its `\n`).
    pub fn decode_line(line: &[u8]) -> Result<Batch, serde_json::Error> {
        let l: LineIn = serde_json::from_slice(line)?;
        Ok(Batch {
            stream: Arc::from(l.s),
            seq: l.q,
            recs: l
                .r
                .into_iter()
                .map(|t| Rec {
                    request_id: t.0.into(),
                    key_id: t.1.map(Arc::from),
                    tenant: t.2.map(Arc::from),
                    model: t.3.into(),
                    served: Arc::from(t.4),
                    upstream: Arc::from(t.5),
                    prompt: t.6,
                    completion: t.7,
                    cost_micros: t.8,
                    status: t.9,
                    at_ms: t.10,
                    est: t.11,
                    stream: t.12,
                })
                .collect(),
        })
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, UTC).
pub fn day_string(day: u32) -> String {
    // Howard Hinnant's civil_from_days.
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Day number of `YYYY-MM-DD`, or `None` when it is not a valid date.
pub fn parse_day(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: i64 = s.get(5..7)?.parse().ok()?;
    let d: i64 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let n = era * 146_097 + doe - 719_468;
    let n = u32::try_from(n).ok()?;
    // Reject 2025-02-30 and friends: the round trip must match.
    (day_string(n) == s).then_some(n)
}

/// Wall clock, ms since the Unix epoch (coarse: a few ms of resolution).
pub fn now_ms() -> u64 {
    crate::sys::coarse_wall_ms()
}

#[cfg(test)]
pub(crate) fn rec(id: &str, tenant: &str, model: &str, p: u64, c: u64, day: u32) -> Rec {
    Rec {
        request_id: id.into(),
        key_id: Some(Arc::from("k1")),
        tenant: (tenant != NO_TENANT).then(|| Arc::from(tenant)),
        model: model.into(),
        served: Arc::from(model),
        upstream: Arc::from("mock"),
        prompt: p,
        completion: c,
        cost_micros: p + 2 * c,
        status: 200,
        at_ms: u64::from(day) * 86_400_000 + 1234,
        est: 2,
        stream: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_417), "2025-11-25");
        assert_eq!(parse_day("2025-11-25"), Some(20_417));
        assert_eq!(
            parse_day("2024-02-29").map(day_string).as_deref(),
            Some("2024-02-29")
        );
        for bad in [
            "2025-02-30",
            "2025-13-01",
            "25-11-25",
            "2025/11/25",
            "1969-12-31",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        for d in (0..40_000).step_by(37) {
            assert_eq!(parse_day(&day_string(d)), Some(d));
        }
    }

    #[test]
    fn lines_round_trip() {
        let b = Batch {
            stream: Arc::from("abc-m"),
            seq: 7,
            recs: vec![
                rec("r1", "acme", "gpt-4o", 3, 4, 5),
                rec("r\"2\n", "-", "m:x", 0, 1, 5),
            ],
        };
        let mut out = Vec::new();
        b.encode_line(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&c| c == b'\n').count(), 1);
        let back = Batch::decode_line(&out[..out.len() - 1]).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.recs[1].tenant(), NO_TENANT);
        assert!(Batch::decode_line(&out[..out.len() / 2]).is_err());
    }
}
