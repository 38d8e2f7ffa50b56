//! Model extraction from request bodies: the validating scanner
//! (`tollgate::route::extract`) against two serde_json references on the
//! same bodies — a full `Value` parse, and a borrowed one-field struct
//! (which still walks every byte, but does not check UTF-8 inside the
//! strings it ignores) — plus `str::from_utf8` alone, the first of the
//! scanner's passes.
//!
//! Bodies of 1 KB, 4 KB, 32 KB and 1 MB, each with `model` as the first and
//! as the last top-level key.
#![expect(
    clippy::expect_used,
    reason = "bench setup; a failure here is a broken bench"
)]

mod bodies;

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;

const MODEL: &str = "vendor3-family2-843";

const SIZES: [(&str, usize); 4] = [
    ("1KB", 1 << 10),
    ("4KB", 4 << 10),
    ("32KB", 32 << 10),
    ("1MB", 1 << 20),
];

/// What a serde-based gateway would deserialize to find the model.
#[derive(Deserialize)]
struct OnlyModel<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
}

fn extract(c: &mut Criterion) {
    let mut group = c.benchmark_group("extract");
    for (label, size) in SIZES {
        for (pos, model_first) in [("model_first", true), ("model_last", false)] {
            let body = bodies::chat_body(size, MODEL, model_first);
            // The three contenders must agree before they are timed.
            let info = tollgate::route::extract(&body).expect("scanner accepts the body");
            assert_eq!(info.model, MODEL);
            assert!(info.stream);
            let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(value["model"], MODEL);
            let only: OnlyModel<'_> = serde_json::from_slice(&body).expect("valid JSON");
            assert!(matches!(only.model, Cow::Borrowed(MODEL)));

            let param = format!("{label}/{pos}");
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(BenchmarkId::new("scanner", &param), &body, |b, body| {
                b.iter(|| tollgate::route::extract(black_box(body)).map(|i| i.model_span))
            });
            // Floor for any validating scanner: `extract` starts with this
            // pass; serde_json skips it for ignored strings.
            group.bench_with_input(
                BenchmarkId::new("utf8_validate", &param),
                &body,
                |b, body| b.iter(|| std::str::from_utf8(black_box(body)).map(str::len)),
            );
            group.bench_with_input(
                BenchmarkId::new("serde_json_value", &param),
                &body,
                |b, body| b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body))),
            );
            group.bench_with_input(
                BenchmarkId::new("serde_borrowed_struct", &param),
                &body,
                |b, body| {
                    b.iter(|| {
                        serde_json::from_slice::<OnlyModel<'_>>(black_box(body))
                            .map(|m| m.model.len())
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, extract);
criterion_main!(benches);
