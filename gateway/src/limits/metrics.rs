//! Counters of refused calls for `/metrics`: why keys were turned away
//! (`tollgate_auth_rejections_total{reason}`) and which limit refused
//! (`tollgate_limit_refusals_total{limit}`). Labels are fixed sets, never
//! key ids, so cardinality stays constant.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Kind, Refused};
use crate::limits::Refusal;

/// The counters.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    invalid_key: AtomicU64,
    model_not_allowed: AtomicU64,
    /// rpm, tpm, budget_tokens, budget_micros, max_streams, store_down.
    refused: [AtomicU64; 6],
}

impl AuthMetrics {
    /// A missing, unknown or revoked key.
    pub fn invalid_key(&self) {
        self.invalid_key.fetch_add(1, Ordering::Relaxed);
    }

    /// A model outside the key's list.
    pub fn model_not_allowed(&self) {
        self.model_not_allowed.fetch_add(1, Ordering::Relaxed);
    }

    /// A refused admission.
    pub fn refused(&self, r: &Refused) {
        let i = match (r.why, r.kind) {
            (Refusal::StoreDown { .. }, _) => 5,
            (_, Some(Kind::Requests)) => 0,
            (_, Some(Kind::Tokens)) => 1,
            (_, Some(Kind::BudgetTokens)) => 2,
            (_, Some(Kind::BudgetMicros)) => 3,
            (_, None) => 4,
        };
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP tollgate_auth_rejections_total Calls refused by key checks.\n");
        out.push_str("# TYPE tollgate_auth_rejections_total counter\n");
        for (reason, c) in [
            ("invalid_key", &self.invalid_key),
            ("model_not_allowed", &self.model_not_allowed),
        ] {
            let _ = writeln!(
                out,
                "tollgate_auth_rejections_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP tollgate_limit_refusals_total Calls refused by a limit.\n");
        out.push_str("# TYPE tollgate_limit_refusals_total counter\n");
        for (limit, c) in [
            "rpm",
            "tpm",
            "budget_tokens",
            "budget_usd",
            "max_streams",
            "store_down",
        ]
        .iter()
        .zip(&self.refused)
        {
            let _ = writeln!(
                out,
                "tollgate_limit_refusals_total{{limit=\"{limit}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
}
