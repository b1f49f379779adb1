//! Cost of one routing decision on the request path's pure part: prior-policy scoring plus
//! `decide` (exclusions, load term, ranking, replica choice, attempt plan), for pools of growing
//! size; and the shipped learned policy (featurize + score + decide) on the default pool.
//!
//! Run: `cargo bench --bench decision`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use l2d::core::decision::{Candidate, DecisionParams, ReplicaLoad, decide};
use l2d::core::policy::{ExpertMeta, Policy, PriorPolicy};
use l2d::core::query::{Query, QueryLimits};
use std::hint::black_box;

/// The binary's allocator (src/main.rs), so allocations cost here what they cost the scheduler.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (id, cost, prior accuracy) per expert.
type ExpertSpecs = Vec<(String, f64, f64)>;

/// A synthetic pool: costs spread over 1..100, accuracies over 0.4..0.9, every ninth replica
/// down, loads 0..7 of a limit of 8 (some replicas saturated), latencies 1..5 ms.
fn pool(experts: usize, replicas: usize) -> (ExpertSpecs, Vec<Vec<ReplicaLoad>>) {
    let specs = (0..experts)
        .map(|i| {
            let cost = 1.0 + (i as f64 * 7.0) % 100.0;
            let accuracy = 0.4 + 0.5 * (i as f64 / experts.max(1) as f64);
            (format!("expert-{i}"), cost, accuracy)
        })
        .collect();
    let loads = (0..experts)
        .map(|i| {
            (0..replicas)
                .map(|r| ReplicaLoad {
                    in_flight: ((i * 3 + r) % 9) as u32,
                    limit: 8,
                    rtt: 0.001 * (1 + (i + r) % 5) as f64,
                    available: (i + r) % 9 != 0,
                })
                .collect()
        })
        .collect();
    (specs, loads)
}

fn bench_decision(c: &mut Criterion) {
    let query = Query::new(
        "Which NFL team represented the AFC at Super Bowl 50?",
        "Super Bowl 50 was an American football game to determine the champion of the NFL.",
        Some("56be4db0acb8001400a502ec".into()),
        &QueryLimits::default(),
    )
    .unwrap();
    let mut group = c.benchmark_group("score_and_decide");
    for (experts, replicas) in [(5, 1), (5, 20), (50, 20), (500, 20)] {
        let (specs, loads) = pool(experts, replicas);
        let policy =
            PriorPolicy::new(0.1, specs.iter().map(|(id, _, a)| (id.clone(), *a))).unwrap();
        let metas: Vec<ExpertMeta<'_>> = specs
            .iter()
            .map(|(id, cost, _)| ExpertMeta { id, cost: *cost })
            .collect();
        let mut scores = Vec::with_capacity(experts);
        let mut seed = 0u64;
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{experts}x{replicas}")),
            &experts,
            |b, _| {
                b.iter(|| {
                    policy.score(0, black_box(&query), &[], &metas, &mut scores);
                    let candidates: Vec<Candidate<'_>> = metas
                        .iter()
                        .zip(&scores)
                        .zip(&loads)
                        .map(|((m, s), r)| Candidate {
                            cost: m.cost,
                            expected_cost: *s,
                            replicas: r,
                        })
                        .collect();
                    seed = seed.wrapping_add(1);
                    let params = DecisionParams {
                        seed,
                        ..DecisionParams::default()
                    };
                    black_box(decide(&candidates, &params).unwrap())
                })
            },
        );
    }
    group.finish();
}

/// The shipped learned policy (defer mode) on a real dev question: featurize with the probes'
/// answers, score the five experts, decide.
fn bench_learned(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/squad-v1.1.json");
    let (policy, _) = l2d::scheduler::load_policy_file(&path, None).unwrap();
    let context = "Super Bowl 50 was an American football game to determine the champion of the National \
        Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver \
        Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn \
        their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San \
        Francisco Bay Area at Santa Clara, California.";
    let query = Query::new(
        "Which NFL team represented the AFC at Super Bowl 50?",
        context,
        None,
        &QueryLimits::default(),
    )
    .unwrap();
    let experts: Vec<ExpertMeta<'_>> = policy
        .file()
        .experts
        .iter()
        .map(|a| ExpertMeta {
            id: &a.id,
            cost: a.cost,
        })
        .collect();
    let loads = vec![ReplicaLoad::idle(0.001)];
    let probes = [Some("Denver Broncos"), Some("Denver Broncos")];
    let mut scores = Vec::new();
    let mut group = c.benchmark_group("learned_defer_policy");
    group.bench_function("featurize_score_decide", |b| {
        b.iter(|| {
            policy.score(
                policy.default_position(),
                black_box(&query),
                &probes,
                &experts,
                &mut scores,
            );
            let candidates: Vec<Candidate<'_>> = experts
                .iter()
                .zip(&scores)
                .map(|(m, s)| Candidate {
                    cost: m.cost,
                    expected_cost: *s,
                    replicas: &loads,
                })
                .collect();
            black_box(decide(&candidates, &DecisionParams::default()).unwrap())
        })
    });
    group.bench_function("featurize_only", |b| {
        b.iter(|| {
            black_box(l2d::core::features::featurize(
                black_box(query.question()),
                query.context(),
                &probes,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decision, bench_learned);
criterion_main!(benches);
