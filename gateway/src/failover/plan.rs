//! Which target to try next: the primary route's targets in balancing
//! order (skipping those whose breaker refuses), then the first fallback
//! whose condition matches the last failure, then that fallback's targets.
//!
//! Fallbacks are one level deep (a fallback's own fallbacks are not
//! followed), so a chain always ends.

use super::breaker::Permit;
use super::class::Class;
use super::condition::Outcome;
use crate::route::{RouteId, RouteTable};

/// A chosen target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The route (primary or a fallback).
    pub route: RouteId,
    /// Index into the route's targets.
    pub target: usize,
    /// The breaker's answer (Go or Probe).
    pub permit: Permit,
}

/// The candidates of one request.
#[derive(Debug)]
pub struct Candidates {
    primary: RouteId,
    /// Route being walked and its target order.
    route: RouteId,
    order: Vec<usize>,
    pos: usize,
    /// Fallback indices already entered (bit set).
    used: u64,
}

impl Candidates {
    /// Starts at the primary route with `first` (the balancer's pick)
    /// followed by the other targets in configuration order.
    pub fn new(table: &RouteTable, primary: RouteId, first: usize) -> Self {
        Candidates {
            primary,
            route: primary,
            order: rotation(table, primary, first),
            pos: 0,
            used: 0,
        }
    }

    /// The first target to try, or `None` when every candidate refuses
    /// and no fallback takes over.
    pub fn first(&mut self, table: &RouteTable, now: u64) -> Option<Pick> {
        match self.walk(table, now) {
            Ok(p) => Some(p),
            Err(refused) => {
                // The breaker state stands in for an attempt's outcome: a
                // cooling-down target reads as 429, an open one as 503.
                let o = refused_outcome(refused);
                self.next(table, &o, now)
            }
        }
    }

    /// The target after a failure with outcome `o`, or `None`.
    pub fn next(&mut self, table: &RouteTable, o: &Outcome, now: u64) -> Option<Pick> {
        if !o.class.may_fail_over() {
            return None;
        }
        loop {
            match self.walk(table, now) {
                Ok(p) => return Some(p),
                Err(_) => {
                    // This route is exhausted: enter the first unused
                    // fallback of the primary whose condition matches.
                    let fallbacks = &table.route(self.primary).fallbacks;
                    let (i, f) = fallbacks.iter().enumerate().find(|(i, f)| {
                        *i < 64
                            && self.used & (1 << i) == 0
                            && f.when.as_ref().is_none_or(|c| c.eval(o))
                    })?;
                    self.used |= 1 << i;
                    self.route = f.route;
                    self.order = rotation(table, f.route, 0);
                    self.pos = 0;
                }
            }
        }
    }

    /// Next target of the current route that its breaker lets through;
    /// `Err` with the last refusal when none is left.
    fn walk(&mut self, table: &RouteTable, now: u64) -> Result<Pick, Permit> {
        let targets = &table.route(self.route).targets;
        let mut refused = Permit::Open;
        while let Some(&t) = self.order.get(self.pos) {
            self.pos += 1;
            let permit = targets[t].breaker.permit(now);
            if permit.allowed() {
                return Ok(Pick {
                    route: self.route,
                    target: t,
                    permit,
                });
            }
            refused = permit;
        }
        Err(refused)
    }
}

fn rotation(table: &RouteTable, route: RouteId, first: usize) -> Vec<usize> {
    let n = table.route(route).targets.len();
    (0..n).map(|i| (first + i) % n).collect()
}

fn refused_outcome(p: Permit) -> Outcome {
    let (status, class) = match p {
        Permit::Cooldown => (429, Class::RateLimited),
        Permit::Go | Permit::Probe | Permit::Open => (503, Class::Status5xx),
    };
    Outcome {
        status,
        latency: std::time::Duration::ZERO,
        class,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::failover::{Breaker, BreakerConfig, Cond, Effect};
    use crate::route::{Fallback, ModelSpec, Target};

    fn target(up: u32) -> Target {
        Target {
            upstream: up,
            model: None,
            weight: 1,
            breaker: Arc::new(Breaker::new(BreakerConfig {
                max_failures: 1,
                ..BreakerConfig::default()
            })),
            failures: Arc::default(),
        }
    }

    fn model(name: &str, targets: Vec<Target>, fallbacks: Vec<(&str, Option<&str>)>) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            aliases: vec![],
            targets,
            hidden: false,
            fallbacks: fallbacks
                .into_iter()
                .map(|(m, w)| Fallback {
                    model: m.into(),
                    route: 0,
                    when: w.map(|w| Cond::parse(w).unwrap()),
                })
                .collect(),
            max_attempts: 5,
            deadline: None,
            tokenizer: None,
            price: None,
        }
    }

    fn article() -> RouteTable {
        RouteTable::build(vec![
            model(
                "gpt-4",
                vec![target(0), target(1)],
                vec![
                    ("claude-3", Some("status >= 500 or latency > 30s")),
                    ("gpt-3.5-turbo", Some("status == 429")),
                ],
            ),
            model("claude-3", vec![target(2)], vec![]),
            model("gpt-3.5-turbo", vec![target(3)], vec![]),
        ])
        .unwrap()
    }

    fn o(status: u16, class: Class) -> Outcome {
        Outcome {
            status,
            latency: Duration::from_millis(5),
            class,
        }
    }

    fn up(t: &RouteTable, p: Pick) -> u32 {
        t.route(p.route).targets[p.target].upstream
    }

    #[test]
    fn own_targets_then_the_matching_fallback() {
        let t = article();
        let mut c = Candidates::new(&t, 0, 1);
        let p = c.first(&t, 1).unwrap();
        assert_eq!(up(&t, p), 1);
        let p = c.next(&t, &o(503, Class::Status5xx), 1).unwrap();
        assert_eq!(up(&t, p), 0);
        let p = c.next(&t, &o(503, Class::Status5xx), 1).unwrap();
        assert_eq!(up(&t, p), 2, "5xx goes to claude-3");
        assert_eq!(c.next(&t, &o(503, Class::Status5xx), 1), None);

        let mut c = Candidates::new(&t, 0, 0);
        c.first(&t, 1).unwrap();
        c.next(&t, &o(429, Class::RateLimited), 1).unwrap();
        let p = c.next(&t, &o(429, Class::RateLimited), 1).unwrap();
        assert_eq!(up(&t, p), 3, "429 goes to gpt-3.5-turbo");
    }

    #[test]
    fn no_failover_on_auth_or_client_errors() {
        let t = article();
        let mut c = Candidates::new(&t, 0, 0);
        c.first(&t, 1).unwrap();
        assert_eq!(c.next(&t, &o(401, Class::Auth), 1), None);
        assert_eq!(c.next(&t, &o(400, Class::ClientError), 1), None);
    }

    #[test]
    fn open_breakers_are_skipped_straight_to_the_fallback() {
        let t = article();
        for tg in &t.route(0).targets {
            tg.breaker.record(Permit::Go, Effect::Failure, None, 1);
        }
        let mut c = Candidates::new(&t, 0, 0);
        let p = c.first(&t, 2).unwrap();
        assert_eq!(up(&t, p), 2, "both primaries open: the 5xx fallback");
        // A cooling-down primary reads as 429.
        let t = article();
        t.route(0).targets[0].breaker.record(
            Permit::Go,
            Effect::Cooldown,
            Some(Duration::from_secs(5)),
            1,
        );
        t.route(0).targets[1].breaker.record(
            Permit::Go,
            Effect::Cooldown,
            Some(Duration::from_secs(5)),
            1,
        );
        let mut c = Candidates::new(&t, 0, 0);
        assert_eq!(up(&t, c.first(&t, 2).unwrap()), 3);
    }
}
