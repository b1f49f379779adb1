//! The QA yardstick and the live readers: official-metric throughput (a whole SQuAD v1.1 dev
//! evaluation per iteration) and each live reader's time per query (a fixed sample of 200 dev
//! questions per iteration).
//!
//! Run: `cargo bench --bench qa`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use l2d::core::query::{Query, QueryLimits};
use l2d::expert::Backend;
use l2d::expert::lexical::LexicalReader;
use l2d::expert::typed::TypedReader;
use l2d::squad::{Dataset, load_predictions};
use std::hint::black_box;
use std::path::Path;

fn bench_qa(c: &mut Criterion) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/squad-v1.1");
    let dataset = Dataset::load(&data.join("dev.json")).unwrap();
    let predictions = load_predictions(&data.join("predictions/bert-large-ensemble.json")).unwrap();

    let mut metric = c.benchmark_group("metric");
    metric.throughput(Throughput::Elements(dataset.len() as u64));
    metric.sample_size(20);
    metric.bench_function("evaluate_squad_v1.1_dev", |b| {
        b.iter(|| black_box(dataset.evaluate(black_box(&predictions))))
    });
    metric.finish();

    let sample: Vec<Query> = dataset
        .questions()
        .step_by(dataset.len() / 200)
        .take(200)
        .map(|(_, p, q)| {
            Query::new(
                q.question.clone(),
                p.context.clone(),
                None,
                &QueryLimits::default(),
            )
            .unwrap()
        })
        .collect();
    let mut readers = c.benchmark_group("reader");
    readers.throughput(Throughput::Elements(sample.len() as u64));
    let backends: [(&str, Box<dyn Backend>); 2] = [
        ("lexical", Box::new(LexicalReader::default())),
        ("typed", Box::new(TypedReader::default())),
    ];
    for (name, backend) in &backends {
        readers.bench_function(*name, |b| {
            b.iter(|| {
                for q in &sample {
                    black_box(backend.answer(black_box(q)).unwrap());
                }
            })
        });
    }
    readers.finish();
}

criterion_group!(benches, bench_qa);
criterion_main!(benches);
