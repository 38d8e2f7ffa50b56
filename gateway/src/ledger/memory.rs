//! Usage totals kept in process memory: the store of `[store] kind =
//! "memory"` (one node), read by `GET /admin/usage`.
//!
//! Only the ledger thread writes (one write lock per batch); the admin
//! thread reads. Days older than [`KEEP_DAYS`] before the newest one are
//! dropped so a long-running node does not grow without bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::aggregate::{Totals, fold};
use super::record::Batch;
use super::{Store, StoreError};

/// Days of history kept in memory.
pub const KEEP_DAYS: u32 = 62;

/// day → tenant → model → totals.
type Days = BTreeMap<u32, BTreeMap<Arc<str>, BTreeMap<Arc<str>, Totals>>>;

/// Totals shared between the ledger thread and the admin listener.
#[derive(Debug, Default)]
pub struct MemoryTotals {
    days: RwLock<Days>,
}

impl MemoryTotals {
    /// Totals of `day`, per tenant and model, optionally one tenant only.
    pub fn day(
        &self,
        day: u32,
        tenant: Option<&str>,
    ) -> BTreeMap<String, BTreeMap<String, Totals>> {
        let Ok(days) = self.days.read() else {
            return BTreeMap::new();
        };
        let Some(tenants) = days.get(&day) else {
            return BTreeMap::new();
        };
        tenants
            .iter()
            .filter(|(t, _)| tenant.is_none_or(|want| &***t == want))
            .map(|(t, models)| {
                (
                    t.to_string(),
                    models.iter().map(|(m, v)| (m.to_string(), *v)).collect(),
                )
            })
            .collect()
    }

    fn add(&self, b: &Batch) {
        let f = fold(&b.recs);
        let Ok(mut days) = self.days.write() else {
            return;
        };
        for (day, tenants) in f {
            let d = days.entry(day).or_default();
            for (tenant, models) in tenants {
                let t = d.entry(tenant).or_default();
                for (model, v) in models {
                    t.entry(model).or_default().add(&v);
                }
            }
        }
        while days.len() > 1 {
            let (Some((&first, _)), Some((&last, _))) =
                (days.first_key_value(), days.last_key_value())
            else {
                break;
            };
            if last - first < KEEP_DAYS {
                break;
            }
            days.remove(&first);
        }
    }
}

/// The in-memory store: totals plus one high-water mark per stream.
pub struct MemoryStore {
    totals: Arc<MemoryTotals>,
    applied: HashMap<Arc<str>, u64>,
}

impl MemoryStore {
    /// A store writing into `totals`.
    pub fn new(totals: Arc<MemoryTotals>) -> Self {
        MemoryStore {
            totals,
            applied: HashMap::new(),
        }
    }
}

impl Store for MemoryStore {
    fn apply(&mut self, batches: &[&Batch]) -> Result<Vec<bool>, StoreError> {
        Ok(batches
            .iter()
            .map(|b| {
                let hwm = self.applied.entry(b.stream.clone()).or_insert(0);
                if b.seq <= *hwm {
                    return false;
                }
                *hwm = b.seq;
                self.totals.add(b);
                true
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::rec;
    use super::*;

    #[test]
    fn applies_once_per_stream_position() {
        let totals = Arc::new(MemoryTotals::default());
        let mut s = MemoryStore::new(totals.clone());
        let b1 = Batch {
            stream: Arc::from("x-m"),
            seq: 1,
            recs: vec![rec("1", "acme", "a", 1, 2, 9), rec("2", "-", "a", 3, 4, 9)],
        };
        let b2 = Batch {
            seq: 2,
            ..b1.clone()
        };
        assert_eq!(s.apply(&[&b1, &b1, &b2]).unwrap(), vec![true, false, true]);
        assert_eq!(s.apply(&[&b2, &b1]).unwrap(), vec![false, false]);
        let d = totals.day(9, None);
        assert_eq!(d["acme"]["a"].requests, 2);
        assert_eq!(d["-"]["a"].completion_tokens, 8);
        assert_eq!(totals.day(9, Some("acme")).len(), 1);
        assert!(totals.day(8, None).is_empty());
        // Old days are pruned.
        let old = Batch {
            stream: Arc::from("y"),
            seq: 1,
            recs: vec![rec("3", "acme", "a", 1, 1, 9 + KEEP_DAYS + 1)],
        };
        s.apply(&[&old]).unwrap();
        assert!(totals.day(9, None).is_empty());
    }
}
