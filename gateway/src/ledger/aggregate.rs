//! Folds a batch into counter increments per (day, tenant, model) before
//! anything is sent: a batch of thousands of records from a handful of
//! tenants and models becomes a few dozen `HINCRBY`s. This is what makes
//! the Redis writer fast, and the in-memory store uses the same fold.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::record::Rec;

/// The four counters kept per tenant, model and day.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Requests (every record counts, failed ones too).
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Price in micro-dollars.
    pub cost_micros: u64,
}

impl Totals {
    /// Counter names, as used in Redis hash fields.
    pub const FIELDS: [&'static str; 4] = [
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost_micros",
    ];

    /// Values in `FIELDS` order.
    pub fn values(&self) -> [u64; 4] {
        [
            self.requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_micros,
        ]
    }

    /// Adds one record.
    pub fn add_rec(&mut self, r: &Rec) {
        self.requests += 1;
        self.prompt_tokens += r.prompt;
        self.completion_tokens += r.completion;
        self.cost_micros += r.cost_micros;
    }

    /// Adds other totals.
    pub fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_micros += o.cost_micros;
    }

    /// Sets the counter named `field`; false when the name is unknown.
    pub fn set(&mut self, field: &str, v: u64) -> bool {
        match field {
            "requests" => self.requests = v,
            "prompt_tokens" => self.prompt_tokens = v,
            "completion_tokens" => self.completion_tokens = v,
            "cost_micros" => self.cost_micros = v,
            _ => return false,
        }
        true
    }
}

/// Increments of one batch: day → tenant → served model → totals.
pub type Fold = BTreeMap<u32, BTreeMap<Arc<str>, BTreeMap<Arc<str>, Totals>>>;

/// Folds records into per-(day, tenant, model) increments.
pub fn fold(recs: &[Rec]) -> Fold {
    let mut out = Fold::new();
    for r in recs {
        let tenants = out.entry(r.day()).or_default();
        let models = match tenants.get_mut(r.tenant()) {
            Some(m) => m,
            None => tenants.entry(Arc::from(r.tenant())).or_default(),
        };
        match models.get_mut(&*r.served) {
            Some(t) => t.add_rec(r),
            None => models.entry(r.served.clone()).or_default().add_rec(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::record::rec;
    use super::*;

    #[test]
    fn folds_per_day_tenant_and_model() {
        let recs = vec![
            rec("1", "acme", "a", 1, 10, 5),
            rec("2", "acme", "a", 2, 20, 5),
            rec("3", "acme", "b", 3, 30, 5),
            rec("4", "-", "a", 4, 40, 5),
            rec("5", "acme", "a", 5, 50, 6),
        ];
        let f = fold(&recs);
        assert_eq!(f.len(), 2);
        let a = f[&5][&Arc::from("acme")][&Arc::from("a")];
        assert_eq!(
            a,
            Totals {
                requests: 2,
                prompt_tokens: 3,
                completion_tokens: 30,
                cost_micros: 3 + 60
            }
        );
        assert_eq!(f[&5][&Arc::from("-")][&Arc::from("a")].requests, 1);
        assert_eq!(f[&5][&Arc::from("acme")].len(), 2);
        assert_eq!(f[&6][&Arc::from("acme")][&Arc::from("a")].prompt_tokens, 5);
        let sum: u64 = f
            .values()
            .flat_map(|t| t.values())
            .flat_map(|m| m.values())
            .map(|t| t.completion_tokens)
            .sum();
        assert_eq!(sum, 150);
    }
}
