//! What auth and admission add to a request: finding the key (SHA-256 of
//! the presented key + one hash-map lookup in the current key table), the
//! model check, and admission with settlement across key and tenant
//! scopes (requests and tokens per minute, a monthly token budget), on
//! one thread, in local mode (memory store; the Redis lease mode takes
//! the same atomics path). Goal from issue 4: under 2 µs per request.
#![expect(
    clippy::expect_used,
    reason = "bench setup; a failure here is a broken bench"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::auth::Auth;
use tollgate::auth::keys::hash;
use tollgate::config::auth::{AuthConfig, KeyConfig, TenantConfig};
use tollgate::limits::period::wall_ms;
use tollgate::limits::{Demand, LimitSpec, Limiter, Period};

const KEY: &[u8] = b"tg-Zq3v8XbN1mK0pLr7sTu2wYa4cDe6fGh9iJkMnOpQrSt";

fn auth(keys: usize) -> Auth {
    let mut cfg = AuthConfig {
        required: true,
        lease_fraction: 0.05,
        ..AuthConfig::default()
    };
    for i in 0..keys {
        let secret = if i == keys / 2 {
            KEY.to_vec()
        } else {
            format!("tg-other-{i}").into_bytes()
        };
        cfg.keys.push(KeyConfig {
            id: format!("key-{i}"),
            tenant: format!("tenant-{}", i % 100),
            digest: hash(&secret),
            models: Some(vec!["gpt-4o*".into()]),
            limits: LimitSpec {
                rpm: Some(1 << 39),
                tpm: Some(1 << 39),
                ..LimitSpec::default()
            },
            model_limits: Vec::new(),
        });
    }
    for t in 0..100 {
        cfg.tenants.push(TenantConfig {
            id: format!("tenant-{t}"),
            models: None,
            limits: LimitSpec {
                rpm: Some(1 << 39),
                budget_tokens: Some(1 << 39),
                budget_period: Some(Period::Month),
                ..LimitSpec::default()
            },
            model_limits: Vec::new(),
        });
    }
    Auth::new(&cfg, Arc::new(Limiter::default()))
}

fn bench(c: &mut Criterion) {
    let a = auth(10_000);
    let head = [b"authorization: Bearer ".as_slice(), KEY].concat();
    let spans = vec![(0..13, 15..head.len())];
    let mut g = c.benchmark_group("auth");
    g.bench_function("sha256_key", |b| b.iter(|| hash(black_box(KEY))));
    g.bench_function("authenticate_10k_keys", |b| {
        b.iter(|| {
            a.authenticate(black_box(&head), black_box(&spans))
                .expect("known key")
        })
    });
    let key = a
        .authenticate(&head, &spans)
        .expect("known key")
        .expect("auth on");
    let demand = Demand {
        tokens: 1200,
        micros: 0,
        stream: false,
    };
    g.bench_function("admit_and_settle_3_windows_2_scopes", |b| {
        b.iter(|| {
            let now = wall_ms();
            let scopes = key.scopes("gpt-4o");
            let adm = a.limiter.admit(&scopes, demand, now).expect("admitted");
            let h = adm.headers.pairs();
            adm.settle(1100, 0, now);
            h
        })
    });
    g.bench_function("whole_auth_admission_path", |b| {
        b.iter(|| {
            let now = wall_ms();
            let k = a
                .authenticate(black_box(&head), black_box(&spans))
                .expect("known key")
                .expect("auth on");
            assert!(k.allows("gpt-4o-mini", "gpt-4o-mini"));
            let scopes = k.scopes("gpt-4o-mini");
            let adm = a.limiter.admit(&scopes, demand, now).expect("admitted");
            let h = adm.headers.pairs();
            adm.settle(1100, 0, now);
            h
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
