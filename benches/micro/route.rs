//! Route table lookups on a 1,000-model table (900 exact names with
//! aliases, 100 globs of two specificities), the weighted round-robin pick,
//! and the per-request routing cost the gateway pays: extract the model
//! from a 4 KB body (model as the last key) and look it up.
#![expect(
    clippy::expect_used,
    reason = "bench setup; a failure here is a broken bench"
)]

mod bodies;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate::route::{ModelSpec, Picker, RouteTable, Target};

const VENDORS: usize = 20;
const FAMILIES: usize = 4;
const EXACT: usize = 900;

const EXACT_HIT: &str = "vendor3-family2-843";
const ALIAS_HIT: &str = "v3f2-843";
/// Matched only by `vendor9-*`: the least specific glob, in last config
/// position among its equals, so every other glob is tried first.
const GLOB_HIT: &str = "vendor9-preview-0611";
/// Shares the `vendor` prefix with every glob and is as long as their
/// literal prefixes, so each of the 100 is tried before the miss.
const MISS: &str = "vendor42-preview-0611";

fn targets(weights: &[u32]) -> Vec<Target> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Target::new(i as u32, None, weight))
        .collect()
}

/// 900 exact models `vendorV-familyF-N` with aliases `vVfF-N` and
/// `vendorV/familyF-N`, then 80 `vendorV-familyF-*` and 20 `vendorV-*`
/// globs. Every exact model has three weighted targets.
fn table() -> RouteTable {
    let mut specs = Vec::with_capacity(EXACT + VENDORS * (FAMILIES + 1));
    for n in 0..EXACT {
        let (v, f) = (n % VENDORS, (n / VENDORS) % FAMILIES);
        specs.push(ModelSpec {
            aliases: vec![format!("v{v}f{f}-{n}"), format!("vendor{v}/family{f}-{n}")],
            ..ModelSpec::new(format!("vendor{v}-family{f}-{n}"), targets(&[5, 3, 2]))
        });
    }
    for v in 0..VENDORS {
        for f in 0..FAMILIES {
            specs.push(ModelSpec::new(
                format!("vendor{v}-family{f}-*"),
                targets(&[1]),
            ));
        }
    }
    for v in 0..VENDORS {
        specs.push(ModelSpec::new(format!("vendor{v}-*"), targets(&[1])));
    }
    RouteTable::build(specs).expect("the bench table is valid")
}

fn route(c: &mut Criterion) {
    let table = table();
    assert_eq!(table.len(), 1000);
    let name = |m: &str| table.lookup(m).map(|id| table.route(id).name.to_string());
    assert_eq!(name(EXACT_HIT).as_deref(), Some(EXACT_HIT));
    assert_eq!(name(ALIAS_HIT).as_deref(), Some(EXACT_HIT));
    assert_eq!(name(GLOB_HIT).as_deref(), Some("vendor9-*"));
    assert_eq!(name(MISS), None);

    let mut group = c.benchmark_group("route");
    for (id, model) in [
        ("lookup/exact", EXACT_HIT),
        ("lookup/alias", ALIAS_HIT),
        ("lookup/glob_last", GLOB_HIT),
        ("lookup/miss", MISS),
    ] {
        group.bench_function(id, |b| b.iter(|| table.lookup(black_box(model))));
    }
    let weighted = table.lookup(EXACT_HIT).expect("exact hit");
    assert_eq!(table.route(weighted).targets.len(), 3);
    let mut picker = Picker::default();
    group.bench_function("pick/wrr_3_targets", |b| {
        b.iter(|| picker.pick(&table, black_box(weighted)))
    });
    group.finish();

    // The number the issue asks for: < 2 µs per request on one core.
    let body = bodies::chat_body(4 << 10, EXACT_HIT, false);
    let mut group = c.benchmark_group("extract+lookup");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("4KB/model_last", |b| {
        b.iter(|| {
            tollgate::route::extract(black_box(&body))
                .ok()
                .and_then(|info| table.lookup(&info.model))
        })
    });
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
