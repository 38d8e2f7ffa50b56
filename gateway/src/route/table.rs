//! The routing table: model name -> route (targets with weights).
//!
//! Lookup order, documented for users:
//! 1. exact names and aliases (one hash lookup);
//! 2. globs, most specific first: more literal characters wins, then the
//!    longer pattern, then config order. So `gpt-4o-mini*` beats `gpt-4o*`
//!    which beats `gpt-*` which beats `*`.
//!
//! The table is immutable and shared by all workers; per-worker balancing
//! state lives in [`super::wrr::Picker`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::glob::Glob;
use crate::failover::{Breaker, Cond, FailureCounts};
use crate::tokens::{Encoding, Tokenizer};

/// Index of an upstream in `Config::upstreams`.
pub type UpstreamId = u32;
/// Index of a route in the table.
pub type RouteId = u32;

/// Where a request for a model may go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream.
    pub upstream: UpstreamId,
    /// Model name sent upstream; `None`: the route's name (exact routes)
    /// or the client's (globs).
    pub model: Option<Arc<str>>,
    /// Relative share of traffic (>= 1).
    pub weight: u32,
    /// This target's circuit breaker, shared by all workers.
    pub breaker: Arc<Breaker>,
    /// Failed attempts by class.
    pub failures: Arc<FailureCounts>,
}

impl Target {
    /// A target with a default (closed) breaker.
    pub fn new(upstream: UpstreamId, model: Option<Arc<str>>, weight: u32) -> Self {
        Target {
            upstream,
            model,
            weight,
            breaker: Arc::new(Breaker::new(crate::failover::BreakerConfig::default())),
            failures: Arc::default(),
        }
    }
}

/// A fallback of a route.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// The model name as configured.
    pub model: String,
    /// The route it resolves to (set by `RouteTable::build`).
    pub route: RouteId,
    /// When to take it; `None`: after any failure that may fail over.
    pub when: Option<Cond>,
}

/// A model as configured, before compilation into the table.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Exact name or glob.
    pub name: String,
    /// Other exact names.
    pub aliases: Vec<String>,
    /// Targets (at least one).
    pub targets: Vec<Target>,
    /// Not listed in `/v1/models`.
    pub hidden: bool,
    /// Fallbacks (their `route` is resolved by `build`).
    pub fallbacks: Vec<Fallback>,
    /// Attempts across targets and fallbacks, first included.
    pub max_attempts: u32,
    /// All attempts must have a response head within this.
    pub deadline: Option<Duration>,
    /// Token counting setting.
    pub tokenizer: Option<Tokenizer>,
    /// Price per token.
    pub price: Option<Price>,
}

impl ModelSpec {
    /// A model with no aliases or fallbacks and default settings.
    pub fn new(name: impl Into<String>, targets: Vec<Target>) -> Self {
        ModelSpec {
            name: name.into(),
            aliases: Vec::new(),
            targets,
            hidden: false,
            fallbacks: Vec::new(),
            max_attempts: 3,
            deadline: None,
            tokenizer: None,
            price: None,
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The configured name (or glob pattern).
    pub name: Arc<str>,
    /// Aliases, for the model list.
    pub aliases: Vec<Arc<str>>,
    /// Targets, at least one.
    pub targets: Vec<Target>,
    /// Hidden from the model list.
    pub hidden: bool,
    /// True for glob routes.
    pub is_glob: bool,
    /// Fallbacks, in order.
    pub fallbacks: Vec<Fallback>,
    /// Attempts across targets and fallbacks, first included.
    pub max_attempts: u32,
    /// All attempts must have a response head within this.
    pub deadline: Option<Duration>,
    /// Token counting setting (`None`: by model family).
    pub tokenizer: Option<Tokenizer>,
    /// Price per token (`None`: free for money budgets).
    pub price: Option<Price>,
    /// Per target, the encoding that counts its tokens where the served
    /// model is fixed (a rewrite, or an exact route's own name), resolved
    /// once here instead of matching the model family on every request;
    /// `None` where it is known only per request (a glob target passing
    /// the client's name on).
    encodings: Box<[Option<Option<Encoding>>]>,
}

impl Route {
    /// The name a target's requests are sent upstream under, when it does
    /// not depend on the request: the target's rewrite, else an exact
    /// route's own name (so aliases and fallbacks reach the provider
    /// under the real name). `None` for a glob target without a rewrite,
    /// which sends the client's name on.
    pub fn fixed_served<'a>(&'a self, target: &'a Target) -> Option<&'a Arc<str>> {
        target
            .model
            .as_ref()
            .or((!self.is_glob).then_some(&self.name))
    }

    /// The encoding that counts tokens for target `i` of this route,
    /// serving `served` (`None`: the model is not counted).
    pub fn encoding(&self, i: usize, served: &str) -> Option<Encoding> {
        match self.encodings.get(i) {
            Some(Some(fixed)) => *fixed,
            _ => crate::tokens::resolve(self.tokenizer, served),
        }
    }
}

/// Price of a model in micro-dollars per token (= dollars per million).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per prompt token.
    pub input: f64,
    /// Per completion token.
    pub output: f64,
}

impl Price {
    /// Micro-dollars for a usage, rounded up to a whole micro-dollar.
    pub fn micros(&self, prompt: u64, completion: u64) -> u64 {
        (prompt as f64 * self.input + completion as f64 * self.output).ceil() as u64
    }
}

/// The table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Looked up once per request with the client's model name. foldhash,
    /// seeded per table: SipHash cost a third of the lookup, and the keys
    /// are the config's names (a client only looks up, never inserts).
    exact: HashMap<Box<str>, RouteId, foldhash::fast::RandomState>,
    /// Sorted most specific first.
    globs: Vec<(Glob, RouteId)>,
}

impl RouteTable {
    /// Builds the table; errors are `(key path, reason)` pairs naming the
    /// `models[i]` entry at fault.
    pub fn build(specs: Vec<ModelSpec>) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut t = RouteTable::default();
        let mut glob_owner: HashMap<String, usize> = HashMap::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let id = i as RouteId;
            let is_glob = Glob::is_glob(&spec.name);
            if is_glob {
                if let Some(prev) = glob_owner.insert(spec.name.clone(), i) {
                    errors.push((
                        format!("models[{i}].name"),
                        format!("duplicate model `{}` (also models[{prev}])", spec.name),
                    ));
                }
                t.globs.push((Glob::new(&spec.name), id));
            } else {
                t.insert_exact(&mut errors, &spec.name, i, "name");
            }
            for (j, alias) in spec.aliases.iter().enumerate() {
                if Glob::is_glob(alias) {
                    errors.push((
                        format!("models[{i}].aliases[{j}]"),
                        format!("alias `{alias}` must be an exact name, not a glob"),
                    ));
                    continue;
                }
                t.insert_exact(&mut errors, alias, i, &format!("aliases[{j}]"));
            }
            let mut route = Route {
                name: Arc::from(spec.name.as_str()),
                aliases: spec.aliases.iter().map(|a| Arc::from(a.as_str())).collect(),
                targets: spec.targets,
                hidden: spec.hidden,
                is_glob,
                fallbacks: spec.fallbacks,
                max_attempts: spec.max_attempts.max(1),
                deadline: spec.deadline,
                tokenizer: spec.tokenizer,
                price: spec.price,
                encodings: Box::default(),
            };
            route.encodings = route
                .targets
                .iter()
                .map(|tg| {
                    route
                        .fixed_served(tg)
                        .map(|served| crate::tokens::resolve(route.tokenizer, served))
                })
                .collect();
            t.routes.push(route);
        }
        // Fallbacks name models; resolve them now that all names are known.
        let mut resolved = Vec::new();
        for (i, r) in t.routes.iter().enumerate() {
            for (j, f) in r.fallbacks.iter().enumerate() {
                match t.lookup(&f.model) {
                    Some(id) if id as usize == i => errors.push((
                        format!("models[{i}].fallbacks[{j}].model"),
                        format!("`{}` is this model itself", f.model),
                    )),
                    Some(id) => resolved.push((i, j, id)),
                    None => errors.push((
                        format!("models[{i}].fallbacks[{j}].model"),
                        format!(
                            "unknown model `{}`; a fallback must be a configured model or alias",
                            f.model
                        ),
                    )),
                }
            }
        }
        for (i, j, id) in resolved {
            t.routes[i].fallbacks[j].route = id;
        }
        // Stable sort keeps config order among equals.
        t.globs.sort_by(|(a, _), (b, _)| {
            b.literals()
                .cmp(&a.literals())
                .then(b.pattern().len().cmp(&a.pattern().len()))
        });
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    fn insert_exact(
        &mut self,
        errors: &mut Vec<(String, String)>,
        name: &str,
        i: usize,
        field: &str,
    ) {
        if let Some(&prev) = self.exact.get(name) {
            let other = self
                .routes
                .get(prev as usize)
                .map(|r| &r.name)
                .map_or_else(|| "this model".to_string(), |n| format!("`{n}`"));
            errors.push((
                format!("models[{i}].{field}"),
                format!(
                    "duplicate model name `{name}` (already routes to {other}, models[{prev}])"
                ),
            ));
        } else {
            self.exact.insert(name.into(), i as RouteId);
        }
    }

    /// Finds the route for a requested model.
    #[inline]
    pub fn lookup(&self, model: &str) -> Option<RouteId> {
        if let Some(&id) = self.exact.get(model) {
            return Some(id);
        }
        self.globs
            .iter()
            .find(|(g, _)| g.matches(model))
            .map(|&(_, id)| id)
    }

    /// A route by id.
    #[inline]
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id as usize]
    }

    /// All routes, in config order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no model is configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The encodings token counting may use: each target's, by the
    /// model's `tokenizer` setting or the served model's family; both for
    /// a glob target that sends the client's model name on (its family is
    /// known only per request).
    pub fn encodings(&self) -> Vec<Encoding> {
        let mut out = Vec::with_capacity(2);
        let mut add = |e: Encoding| {
            if !out.contains(&e) {
                out.push(e);
            }
        };
        for r in &self.routes {
            for fixed in &r.encodings {
                match fixed {
                    // Resolved at build: the served model is fixed.
                    Some(e) => e.iter().copied().for_each(&mut add),
                    // A glob passing the client's name on: by the family
                    // of whatever comes, unless the route names a tokenizer.
                    None if r.tokenizer.is_none() => {
                        add(Encoding::O200k);
                        add(Encoding::Cl100k);
                    }
                    None => crate::tokens::resolve(r.tokenizer, "")
                        .into_iter()
                        .for_each(&mut add),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, aliases: &[&str]) -> ModelSpec {
        ModelSpec {
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ..ModelSpec::new(name, vec![Target::new(0, None, 1)])
        }
    }

    #[test]
    fn a_target_counts_with_its_served_model_s_encoding() {
        let model = |name: &str, served: Option<&str>, tok: Option<Tokenizer>| ModelSpec {
            tokenizer: tok,
            ..ModelSpec::new(name, vec![Target::new(0, served.map(Arc::from), 1)])
        };
        let t = RouteTable::build(vec![
            model("gpt-4o-mini", None, None),
            model("fast", Some("gpt-4"), None),
            model("gpt-*", None, None),
            model("claude-*", Some("gpt-4.1"), None),
            model("quiet", None, Some(Tokenizer::None)),
            model("llama", None, Some(Tokenizer::O200kBase)),
        ])
        .unwrap();
        // What prepare passes as `served` for each: the rewrite, the
        // route's own name, or (globs) the client's.
        let cases = [
            (0, "gpt-4o-mini", Some(Encoding::O200k)),
            (1, "gpt-4", Some(Encoding::Cl100k)),
            (2, "gpt-4o", Some(Encoding::O200k)),
            (2, "gpt-3.5-turbo", Some(Encoding::Cl100k)),
            (3, "gpt-4.1", Some(Encoding::O200k)),
            (4, "quiet", None),
            (5, "llama", Some(Encoding::O200k)),
        ];
        for (route, served, want) in cases {
            let r = t.route(route);
            assert_eq!(r.encoding(0, served), want, "{} serving {served}", r.name);
            assert_eq!(
                r.encoding(0, served),
                crate::tokens::resolve(r.tokenizer, served),
                "{}: the same as resolving per request",
                r.name
            );
        }
        // Resolved at build where the served model is fixed; a glob that
        // passes the client's name on resolves per request.
        let fixed: Vec<bool> = (0..6).map(|i| t.route(i).encodings[0].is_some()).collect();
        assert_eq!(fixed, [true, true, false, true, true, true]);
    }

    #[test]
    fn encodings_in_use() {
        let model = |name: &str, served: Option<&str>, tok: Option<Tokenizer>| ModelSpec {
            tokenizer: tok,
            ..ModelSpec::new(name, vec![Target::new(0, served.map(Arc::from), 1)])
        };
        let enc = |specs| RouteTable::build(specs).unwrap().encodings();
        assert_eq!(
            enc(vec![
                model("gpt-4o-mini", None, None),
                model("fast", Some("gpt-4.1"), None)
            ]),
            vec![Encoding::O200k]
        );
        // Other families count with cl100k_base; `none` counts nothing.
        assert_eq!(
            enc(vec![
                model("claude-3", None, None),
                model("gpt-4o", None, Some(Tokenizer::None))
            ]),
            vec![Encoding::Cl100k]
        );
        assert_eq!(
            enc(vec![model("llama", None, Some(Tokenizer::O200kBase))]),
            vec![Encoding::O200k]
        );
        // A glob passing the client's model on: either.
        assert_eq!(
            enc(vec![model("gpt-*", None, None)]),
            vec![Encoding::O200k, Encoding::Cl100k]
        );
        assert_eq!(
            enc(vec![model("gpt-*", Some("gpt-4o"), None)]),
            vec![Encoding::O200k]
        );
    }

    #[test]
    fn fallbacks_resolve_or_are_named() {
        let mut a = spec("a", &["alias-a"]);
        let mut b = spec("b", &[]);
        b.fallbacks = vec![Fallback {
            model: "alias-a".into(),
            route: 0,
            when: None,
        }];
        a.fallbacks = vec![Fallback {
            model: "zzz".into(),
            route: 0,
            when: None,
        }];
        let e = RouteTable::build(vec![a, b.clone()]).unwrap_err();
        assert_eq!(e[0].0, "models[0].fallbacks[0].model");
        let t = RouteTable::build(vec![spec("a", &["alias-a"]), b]).unwrap();
        assert_eq!(t.route(1).fallbacks[0].route, 0);
    }

    #[test]
    fn exact_beats_glob_and_longest_glob_wins() {
        let t = RouteTable::build(vec![
            spec("*", &[]),
            spec("gpt-*", &[]),
            spec("gpt-4o*", &[]),
            spec("gpt-4o", &["gpt4o"]),
            spec("gpt-4o-mini*", &[]),
        ])
        .unwrap();
        let name = |m: &str| t.lookup(m).map(|id| t.route(id).name.to_string());
        assert_eq!(name("gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(name("gpt4o").as_deref(), Some("gpt-4o"));
        assert_eq!(name("gpt-4o-2024").as_deref(), Some("gpt-4o*"));
        assert_eq!(name("gpt-4o-mini-x").as_deref(), Some("gpt-4o-mini*"));
        assert_eq!(name("gpt-3.5").as_deref(), Some("gpt-*"));
        assert_eq!(name("llama").as_deref(), Some("*"));
    }

    #[test]
    fn unknown_is_none() {
        let t = RouteTable::build(vec![spec("a", &[])]).unwrap();
        assert_eq!(t.lookup("b"), None);
    }

    #[test]
    fn duplicates_are_named() {
        let e = RouteTable::build(vec![
            spec("a", &["x"]),
            spec("x", &[]),
            spec("b*", &[]),
            spec("b*", &[]),
        ])
        .unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "models[1].name");
        assert!(e[0].1.contains("`x`"), "{}", e[0].1);
        assert_eq!(e[1].0, "models[3].name");
    }
}
