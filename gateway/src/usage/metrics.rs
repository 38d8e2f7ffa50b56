//! Running token totals for `/metrics`:
//! `tollgate_tokens_total{model,kind,source}`.
//!
//! Counters are shared atomics, one set per served model, found through a
//! read-locked map (write-locked only the first time a model is seen);
//! an update is a map lookup and two relaxed adds. Label cardinality is
//! bounded: past
//! `MAX_MODELS` distinct names (glob routes pass client-chosen names) new
//! names count under `model="other"`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{Source, UsageRecord, UsageSink};

/// Most distinct model labels.
pub const MAX_MODELS: usize = 1000;

/// The four counters of one model.
#[derive(Debug, Default)]
pub struct ModelCounters {
    prompt_provider: AtomicU64,
    prompt_estimated: AtomicU64,
    completion_provider: AtomicU64,
    completion_estimated: AtomicU64,
}

impl ModelCounters {
    fn add(&self, prompt: (u64, Source), completion: (u64, Source)) {
        let p = match prompt.1 {
            Source::Provider => &self.prompt_provider,
            Source::Estimated => &self.prompt_estimated,
        };
        p.fetch_add(prompt.0, Ordering::Relaxed);
        let c = match completion.1 {
            Source::Provider => &self.completion_provider,
            Source::Estimated => &self.completion_estimated,
        };
        c.fetch_add(completion.0, Ordering::Relaxed);
    }
}

/// Process-wide token totals; also a [`UsageSink`].
#[derive(Debug, Default)]
pub struct TokenMetrics {
    /// Looked up once per request. foldhash, seeded per map: SipHash was
    /// most of the lookup; the names a client can add are capped at
    /// [`MAX_MODELS`], so a flood of crafted names cannot grow it.
    models: RwLock<HashMap<Arc<str>, Arc<ModelCounters>, foldhash::fast::RandomState>>,
}

impl TokenMetrics {
    /// The counters of a model, created on first use.
    pub fn counters(&self, model: &str) -> Arc<ModelCounters> {
        if let Some(c) = self.models.read().ok().and_then(|m| {
            // Past the cap, unknown names share "other" without ever
            // taking the write lock again.
            m.get(model)
                .or_else(|| (m.len() >= MAX_MODELS).then(|| m.get("other")).flatten())
                .cloned()
        }) {
            return c;
        }
        let Ok(mut m) = self.models.write() else {
            // A poisoned lock only means a panic elsewhere; count anyway.
            return Arc::new(ModelCounters::default());
        };
        let key: Arc<str> = if m.len() >= MAX_MODELS && !m.contains_key(model) {
            Arc::from("other")
        } else {
            Arc::from(model)
        };
        m.entry(key).or_default().clone()
    }

    /// Prometheus text exposition of the totals.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP tollgate_tokens_total Tokens by served model, kind and source.\n");
        out.push_str("# TYPE tollgate_tokens_total counter\n");
        let Ok(m) = self.models.read() else { return };
        let mut names: Vec<&Arc<str>> = m.keys().collect();
        names.sort();
        for name in names {
            let c = &m[name];
            let label = escape_label(name);
            for (kind, source, v) in [
                ("prompt", "provider", &c.prompt_provider),
                ("prompt", "estimated", &c.prompt_estimated),
                ("completion", "provider", &c.completion_provider),
                ("completion", "estimated", &c.completion_estimated),
            ] {
                let _ = writeln!(
                    out,
                    "tollgate_tokens_total{{model=\"{label}\",kind=\"{kind}\",source=\"{source}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
    }
}

impl UsageSink for TokenMetrics {
    fn record(&self, r: &UsageRecord) {
        self.counters(&r.served_model).add(
            (r.prompt_tokens, r.prompt_source),
            (r.completion_tokens, r.completion_source),
        );
    }
}

/// Escapes a Prometheus label value (`\`, `"`, newline).
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_cardinality_cap() {
        let m = TokenMetrics::default();
        m.counters("a\"b")
            .add((3, Source::Provider), (5, Source::Estimated));
        m.counters("a\"b")
            .add((1, Source::Provider), (2, Source::Estimated));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(
                r#"tollgate_tokens_total{model="a\"b",kind="prompt",source="provider"} 4"#
            ),
            "{out}"
        );
        assert!(out.contains(
            r#"tollgate_tokens_total{model="a\"b",kind="completion",source="estimated"} 7"#
        ));
        for i in 0..MAX_MODELS + 5 {
            m.counters(&format!("m{i}"))
                .add((1, Source::Provider), (0, Source::Provider));
        }
        assert!(m.models.read().unwrap().len() <= MAX_MODELS + 1);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(r#"model="other",kind="prompt",source="provider"}"#));
    }
}
