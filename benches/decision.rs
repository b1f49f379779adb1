//! Cost of one routing decision on the request path's pure part: prior-policy scoring plus
//! `decide` (exclusions, load term, ranking, replica choice, attempt plan), for pools of growing
//! size; and the shipped learned policy (featurize + score + decide) on the default pool, on
//! whole dev passages of the median and the 90th-percentile length; and the check of what each
//! expert of the default pool can take.
//!
//! Run: `cargo bench --bench decision`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use l2d::core::decision::{Candidate, DecisionParams, ReplicaLoad, decide};
use l2d::core::policy::{ExpertMeta, Observed, Policy, PriorPolicy};
use l2d::core::query::{Query, QueryLimits};
use l2d::core::reading::ContextAnalysis;
use l2d::squad::Dataset;
use std::hint::black_box;
use std::sync::Arc;

/// The binary's allocator (src/main.rs), so allocations cost here what they cost the scheduler.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (id, cost, prior accuracy) per expert.
type ExpertSpecs = Vec<(String, f64, f64)>;

/// A synthetic pool: costs spread over 1..100, accuracies over 0.4..0.9, every ninth replica
/// down, loads 0..=8 of a limit of 8 (some replicas saturated), latencies 1..5 ms.
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
                            unfit: None,
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

/// A fixed sample of dev questions whose passages are `words` words long (±5%), in file order:
/// `(question, context, probe answers)`. The probes' answers are the question's first two
/// reference answers (what two agreeing or nearly agreeing probes look like).
fn sample_at(dataset: &Dataset, words: usize, n: usize) -> Vec<(String, String, [String; 2])> {
    let (lo, hi) = (words * 95 / 100, words * 105 / 100);
    dataset
        .questions()
        .filter(|(_, p, _)| (lo..=hi).contains(&p.context.split_whitespace().count()))
        .take(n)
        .map(|(_, p, q)| {
            let first = q
                .answers
                .first()
                .map(|a| a.text.clone())
                .unwrap_or_default();
            let second = q.answers.get(1).map_or(first.clone(), |a| a.text.clone());
            (q.question.clone(), p.context.clone(), [first, second])
        })
        .collect()
}

/// The shipped policies on whole dev passages, at the median passage length and at the 90th
/// percentile, 32 questions each, one per iteration in turn:
///
/// - group `learned_defer_policy`: the defer-mode policy (`policies/squad-v1.1-defer.json`):
///   featurize with the two probes' answers (each question's first two reference answers),
///   score the five experts, decide;
/// - group `shipped_cascade_first_step`: the cascade-mode policy
///   (`policies/squad-v1.1-cascade.json`), its first step, which every request takes: featurize
///   the query with no answer seen yet, score asking each expert, decide.
fn bench_learned(c: &mut Criterion) {
    bench_policy(
        c,
        "learned_defer_policy",
        "policies/squad-v1.1-defer.json",
        true,
    );
    bench_policy(
        c,
        "shipped_cascade_first_step",
        "policies/squad-v1.1-cascade.json",
        false,
    );
}

fn bench_policy(c: &mut Criterion, group: &str, file: &str, with_probes: bool) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (policy, _) = l2d::scheduler::load_policy_file(&root.join(file), None).unwrap();
    let dataset = Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap();
    let mut lengths: Vec<usize> = dataset
        .articles
        .iter()
        .flat_map(|a| &a.paragraphs)
        .map(|p| p.context.split_whitespace().count())
        .collect();
    lengths.sort_unstable();
    let at = |q: f64| lengths[((lengths.len() - 1) as f64 * q).round() as usize];
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
    let mut group = c.benchmark_group(group);
    for (name, words) in [("median passage", at(0.5)), ("p90 passage", at(0.9))] {
        let sample = sample_at(&dataset, words, 32);
        let queries: Vec<(Query, [&str; 2])> = sample
            .iter()
            .map(|(q, c, probes)| {
                let query = Query::new(q, c, None, &QueryLimits::default()).unwrap();
                (query, [probes[0].as_str(), probes[1].as_str()])
            })
            .collect();
        // The same queries with their contexts analysed before (the scheduler's context cache
        // holds a passage asked about again).
        let analysed: Vec<(Query, [&str; 2])> = queries
            .iter()
            .map(|(q, probes)| {
                let analysis = Arc::new(ContextAnalysis::of(q.context()));
                (q.clone().with_analysis(analysis), *probes)
            })
            .collect();
        let mut scores = Vec::new();
        for (label, queries) in [("", &queries), (", context analysed before", &analysed)] {
            let mut i = 0;
            group.bench_function(
                format!("featurize_score_decide/{name} ({words} words){label}"),
                |b| {
                    b.iter(|| {
                        i = (i + 1) % queries.len();
                        let (query, probes) = &queries[i];
                        // The cascade has no probes: nothing observed.
                        let id = |k: usize| policy.probes().get(k).map_or("", String::as_str);
                        let observed = [
                            Observed {
                                expert: id(0),
                                answer: Some(probes[0]),
                            },
                            Observed {
                                expert: id(1),
                                answer: Some(probes[1]),
                            },
                        ];
                        let observed = if with_probes { &observed[..] } else { &[] };
                        policy.score(
                            policy.default_position(),
                            black_box(query),
                            observed,
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
                                unfit: None,
                            })
                            .collect();
                        black_box(decide(&candidates, &DecisionParams::default()).unwrap())
                    })
                },
            );
        }
        let unseen = vec![None; experts.len()];
        let mut i = 0;
        group.bench_function(format!("featurize_only/{name} ({words} words)"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                let (query, probes) = &queries[i];
                let answers = [Some(probes[0]), Some(probes[1])];
                black_box(l2d::core::features::featurize(
                    black_box(query.question()),
                    query.context(),
                    // A cascade's first step: every expert's answer, none seen yet.
                    if with_probes { &answers } else { &unseen },
                ))
            })
        });
    }
    group.finish();
}

/// What the request path adds per query to know who can take it: the default pool's five replay
/// experts (their announced recordings) and the live reader (no declaration), checked by query
/// id and, for a query sent without one, by its question and context (a whole dev passage).
fn bench_capabilities(c: &mut Criterion) {
    use l2d::core::capability::{Capabilities, QueryFit};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dataset = Arc::new(Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap());
    let pool = l2d::pool_file::PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    let cache = l2d::squad::DatasetCache::default();
    let declared: Vec<Capabilities> = pool
        .experts
        .iter()
        .map(|spec| {
            l2d::cluster::build_model(spec, &cache)
                .unwrap()
                .capabilities()
        })
        .collect();
    let questions: Vec<(String, String, String)> = dataset
        .questions()
        .step_by(97)
        .map(|(_, p, q)| (q.id.clone(), q.question.clone(), p.context.clone()))
        .collect();
    let mut group = c.benchmark_group("capabilities");
    for by_id in [true, false] {
        let mut i = 0;
        let name = if by_id {
            "by id"
        } else {
            "by question and context"
        };
        group.bench_function(format!("default pool, 6 experts, {name}"), |b| {
            b.iter(|| {
                i = (i + 1) % questions.len();
                let (id, question, context) = &questions[i];
                let fit = QueryFit::new(question, context, by_id.then_some(id.as_str()), None);
                let held = declared.iter().filter(|c| c.admits(&fit).is_ok()).count();
                black_box(held)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decision, bench_learned, bench_capabilities);
criterion_main!(benches);
