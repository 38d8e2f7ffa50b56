//! Smooth weighted round robin (the algorithm nginx uses for upstream
//! weights): over any window of `sum(weights)` picks each target is chosen
//! exactly `weight` times, and picks of a heavy target are spread out
//! instead of bunched.
//!
//! State is per worker (no sharing, no atomics); each worker converges to
//! the weights on its own, so the node as a whole does too.

use super::table::{RouteId, RouteTable};

/// Per-worker balancing state for every route of one table.
#[derive(Debug, Default)]
pub struct Picker {
    /// `current[route][target]`, created on first use of a route.
    current: Vec<Vec<i64>>,
}

impl Picker {
    /// Picks the target index for a route.
    pub fn pick(&mut self, table: &RouteTable, id: RouteId) -> usize {
        let targets = &table.route(id).targets;
        if targets.len() == 1 {
            return 0;
        }
        let idx = id as usize;
        if self.current.len() <= idx {
            self.current.resize_with(idx + 1, Vec::new);
        }
        let cur = &mut self.current[idx];
        if cur.len() != targets.len() {
            *cur = vec![0; targets.len()];
        }
        let mut total = 0i64;
        let mut best = 0usize;
        for (i, t) in targets.iter().enumerate() {
            let w = i64::from(t.weight);
            cur[i] += w;
            total += w;
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::{ModelSpec, Target};

    #[test]
    fn exact_shares_and_spread() {
        let targets = [5u32, 1, 1]
            .iter()
            .enumerate()
            .map(|(i, &w)| Target {
                upstream: i as u32,
                model: None,
                weight: w,
                breaker: std::sync::Arc::new(crate::failover::Breaker::new(Default::default())),
                failures: Default::default(),
            })
            .collect();
        let t = RouteTable::build(vec![ModelSpec {
            name: "m".into(),
            aliases: vec![],
            targets,
            hidden: false,
            fallbacks: vec![],
            max_attempts: 1,
            deadline: None,
            tokenizer: None,
            price: None,
        }])
        .unwrap();
        let mut p = Picker::default();
        let picks: Vec<usize> = (0..7).map(|_| p.pick(&t, 0)).collect();
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..7000 {
            counts[p.pick(&t, 0)] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }
}
