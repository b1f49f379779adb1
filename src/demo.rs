//! `l2d demo`: the whole system on built-in defaults. Starts the default pool and a scheduler
//! with the shipped learned policy in-process, sends every question of the policy's test
//! articles through `Router.Ask`, and prints what the routing achieved beside the baselines
//! (each expert alone, the oracle, the random mix at the same cost, the cascade), which are
//! computed from the same experts' answers to the same questions.

use crate::cluster;
use crate::core::learned::PolicyFile;
use crate::core::metric::score;
use crate::pool_file::PoolFile;
use crate::report::progress_bar;
use crate::scheduler::{PolicySource, Scheduler, SchedulerConfig, load_policy_file};
use crate::squad::Dataset;
use crate::train::eval::{EvalOptions, EvalReport, Row, evaluate};
use crate::train::labels::{LabelOptions, label};
use crate::{Ask, RouterClient};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub concurrency: usize,
    pub progress: bool,
    pub limit: Option<usize>,
    /// Scheduler settings (exploration, decision log, ...).
    pub scheduler: SchedulerConfig,
}

/// What the demo measured: the live policy through the scheduler, and the offline evaluation of
/// the same policy file with its baselines on the same questions.
#[derive(Debug, Clone)]
pub struct DemoResult {
    pub live: Row,
    pub questions: usize,
    pub errors: BTreeMap<String, u64>,
    pub offline: EvalReport,
}

pub async fn demo(
    pool_path: &Path,
    policy_path: &Path,
    data_path: &Path,
    options: &DemoOptions,
) -> anyhow::Result<DemoResult> {
    let pool = PoolFile::load(pool_path)?;
    let dataset = Dataset::load(data_path)?;
    let (learned, digest) = load_policy_file(policy_path, None)?;
    let file: PolicyFile = learned.file().clone();
    let test: HashSet<String> = file.split.test_articles.iter().cloned().collect();

    // The scheduler with the learned policy, and its pool, on loopback.
    let source = PolicySource::File {
        path: policy_path.to_owned(),
        lambda: None,
    };
    let mut scheduler =
        Scheduler::with_source(options.scheduler.clone(), Box::new(learned), source, digest);
    scheduler.open_decision_log()?;
    let scheduler = Arc::new(scheduler);
    let local = cluster::start_pool(&pool, &scheduler).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::scheduler::serve(
        listener,
        scheduler.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let result = ask_all(&address.to_string(), &dataset, &test, options).await;
    let _ = stop.send(());
    server.await??;
    local.shutdown().await?;
    let (live, questions, errors) = result?;

    // The same questions, asked directly of every expert the policy knows: the baselines. (An
    // expert it was not trained on, such as the live reader for questions no recording holds,
    // is in the pool but not in the comparison.)
    let known: Vec<String> = file.experts.iter().map(|e| e.id.clone()).collect();
    let labelled = pool
        .only(&known)
        .map_err(|e| anyhow::anyhow!("the policy's experts are not all in the pool: {e}"))?;
    let labels = label(
        &labelled,
        &dataset,
        &data_path.display().to_string(),
        &LabelOptions {
            concurrency: options.concurrency,
            limit: options.limit,
            progress: false,
            articles: Some(test),
        },
    )
    .await?;
    // Priced as the live scheduler prices waiting, at the pool's declared service times.
    let eval_options = EvalOptions {
        waiting: pool.waiting(options.scheduler.wait_price),
        ..EvalOptions::default()
    };
    let offline = evaluate(&labels, &file, &eval_options)?;
    Ok(DemoResult {
        live,
        questions,
        errors,
        offline,
    })
}

type Live = (Row, usize, BTreeMap<String, u64>);

/// (id, question, context, reference answers) of one test question.
type TestQuestion = (String, String, String, Vec<String>);

async fn ask_all(
    router: &str,
    dataset: &Dataset,
    test: &HashSet<String>,
    options: &DemoOptions,
) -> anyhow::Result<Live> {
    let version = dataset.metric_version();
    let questions: Arc<Vec<TestQuestion>> = Arc::new(
        dataset
            .questions()
            .filter(|(a, _, _)| test.contains(&a.title))
            .take(options.limit.unwrap_or(usize::MAX))
            .map(|(_, p, q)| {
                let references = q.answers.iter().map(|a| a.text.clone()).collect();
                (
                    q.id.clone(),
                    q.question.clone(),
                    p.context.clone(),
                    references,
                )
            })
            .collect(),
    );
    let client = RouterClient::connect(router).await?;
    let bar = progress_bar(options.progress, questions.len() as u64, "Router.Ask");
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let (mut client, questions, next, bar) =
            (client.clone(), questions.clone(), next.clone(), bar.clone());
        workers.push(tokio::spawn(async move {
            let mut out: Vec<Result<(f64, f64, f64, String), String>> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, question, context, references)) = questions.get(i) else {
                    break;
                };
                let ask = Ask::new(question.clone(), context.clone()).id(id.clone());
                out.push(match client.ask(ask).await {
                    Ok(answer) => {
                        let refs: Vec<&str> = references.iter().map(String::as_str).collect();
                        let s = score(&answer.text, &refs, version);
                        Ok((s.exact, s.f1, answer.cost, answer.expert_id))
                    }
                    Err(status) => Err(crate::grpc::status::code_name(status.code()).to_owned()),
                });
                bar.inc(1);
            }
            out
        }));
    }
    let (mut em, mut f1, mut cost) = (0.0, 0.0, 0.0);
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        for r in w.await? {
            match r {
                Ok((e, f, c, expert)) => {
                    em += e;
                    f1 += f;
                    cost += c;
                    *shares.entry(expert).or_default() += 1.0;
                }
                Err(code) => *errors.entry(code).or_default() += 1,
            }
        }
    }
    bar.finish_and_clear();
    let n = questions.len().max(1) as f64;
    shares.values_mut().for_each(|v| *v /= n);
    let live = Row {
        em: 100.0 * em / n,
        f1: 100.0 * f1 / n,
        mean_cost: cost / n,
        shares,
    };
    Ok((live, questions.len(), errors))
}

/// The demo's table.
pub fn demo_table(result: &DemoResult) -> String {
    let best = result
        .offline
        .policy
        .always_best_cost
        .max(f64::MIN_POSITIVE);
    let mut out = format!(
        "{} questions of {} test articles (never seen in training), through Router.Ask; policy: {:?} mode, lambda {}\n\n",
        result.questions,
        result.offline.policy.test_articles,
        result.offline.policy.mode,
        result.offline.policy.lambda
    );
    out.push_str(&format!(
        "{:<38} {:>6} {:>6} {:>10} {:>8}  {}\n",
        "ALLOCATION", "EM", "F1", "MEAN COST", "% BEST", "SHARES"
    ));
    let mut row = |name: &str, r: &Row| {
        let shares: Vec<String> = r
            .shares
            .iter()
            .map(|(k, v)| format!("{k} {:.0}%", 100.0 * v))
            .collect();
        out.push_str(&format!(
            "{name:<38} {:>6.2} {:>6.2} {:>10.2} {:>7.1}%  {}\n",
            r.em,
            r.f1,
            r.mean_cost,
            100.0 * r.mean_cost / best,
            shares.join(", ")
        ));
    };
    row("learned policy (live)", &result.live);
    row(
        "learned policy (offline evaluation)",
        &result.offline.policy.row,
    );
    // The mix at the cost the live policy was charged, not at the offline one.
    row(
        "random mix at the live cost",
        &crate::train::eval::mix_row(&result.offline, result.live.mean_cost),
    );
    if let Some(c) = &result.offline.cascade {
        row("cascade (match-lstm+rnet, else bert)", c);
    }
    let lambda = result.offline.policy.lambda;
    if let Some(t) = result
        .offline
        .agreement_table
        .iter()
        .find(|p| p.lambda == lambda)
    {
        row("agreement table (same lambda)", &t.row);
    }
    let mut experts: Vec<(&String, &Row)> = result.offline.experts.iter().collect();
    experts.sort_by(|a, b| a.1.mean_cost.total_cmp(&b.1.mean_cost));
    if let Some((id, r)) = experts.first() {
        row(&format!("cheapest: always {id}"), r);
    }
    if let Some((id, r)) = experts.iter().max_by(|a, b| a.1.em.total_cmp(&b.1.em)) {
        row(&format!("best: always {id}"), r);
    }
    row("oracle (cheapest correct expert)", &result.offline.oracle);
    if !result.errors.is_empty() {
        out.push_str(&format!("\nfailed calls: {:?}\n", result.errors));
    }
    out
}
