//! `l2d experts-report`: runs every expert of a pool over a SQuAD-format data set through the
//! real gRPC path and measures what each delivers: EM and F1 (official metric), latency seen by
//! the caller, compute the expert reported, declared cost.

use crate::cluster::{self, LocalExperts};
use crate::grpc::pb::{self, expert_client::ExpertClient};
use crate::grpc::status::code_name;
use crate::pool_file::PoolFile;
use crate::squad::Dataset;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExpertReport {
    pub expert_id: String,
    pub backend: String,
    pub cost: f64,
    /// Official-metric exact match and F1, in percent, over the questions asked.
    pub em: f64,
    pub f1: f64,
    pub questions: u64,
    /// Calls that returned a status instead of an answer, by code (they score 0).
    pub errors: BTreeMap<String, u64>,
    /// Latency seen by the caller, through gRPC on loopback.
    pub mean_latency_us: f64,
    pub p99_latency_us: u64,
    /// Time the backend reported spending, mean per answered call.
    pub mean_backend_us: f64,
    /// Compute units the backend reported, mean per answered call.
    pub mean_compute_units: f64,
}

#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Ask at most this many questions (in file order).
    pub limit: Option<usize>,
    /// Calls in flight per expert.
    pub concurrency: usize,
    pub progress: bool,
}

/// One question put to one expert.
#[derive(Debug, Clone)]
pub struct Call {
    pub latency_us: u64,
    /// The answer, or the gRPC status code name.
    pub result: Result<pb::AnswerResponse, &'static str>,
}

/// Runs the report. Experts with neither in-process replicas nor an address are skipped (they
/// are reached by registration, which a report does not wait for).
pub async fn experts_report(
    pool: &PoolFile,
    dataset: &Dataset,
    options: &ReportOptions,
) -> anyhow::Result<Vec<ExpertReport>> {
    let questions: Vec<(String, String, String)> = dataset
        .questions()
        .take(options.limit.unwrap_or(usize::MAX))
        .map(|(_, p, q)| (q.id.clone(), q.question.clone(), p.context.clone()))
        .collect();
    let questions = Arc::new(questions);
    let asked: HashSet<&str> = questions.iter().map(|(id, _, _)| id.as_str()).collect();
    let local = cluster::spawn_local_experts(pool).await?;
    let result = run_all(pool, dataset, options, &local, &questions, &asked).await;
    local.shutdown().await?;
    result
}

async fn run_all(
    pool: &PoolFile,
    dataset: &Dataset,
    options: &ReportOptions,
    local: &LocalExperts,
    questions: &Arc<Vec<(String, String, String)>>,
    asked: &HashSet<&str>,
) -> anyhow::Result<Vec<ExpertReport>> {
    let mut reports = Vec::new();
    for spec in &pool.experts {
        let addresses = cluster::expert_addresses(spec, local);
        let Some(address) = addresses.first() else {
            tracing::warn!(expert = %spec.id, "no in-process replica or address; skipped");
            continue;
        };
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let progress = progress_bar(options.progress, questions.len() as u64, &spec.id);
        let calls = ask_every_question(
            channel,
            questions.clone(),
            options.concurrency.max(1),
            &progress,
        )
        .await?;
        progress.finish_and_clear();
        let mut answers = HashMap::with_capacity(calls.len());
        let mut errors = BTreeMap::new();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let (mut backend_us, mut units, mut answered) = (0u64, 0.0, 0u64);
        for ((id, _, _), call) in questions.iter().zip(&calls) {
            latency.saturating_record(call.latency_us.max(1));
            match &call.result {
                Ok(answer) => {
                    if let Some(compute) = &answer.compute {
                        backend_us += compute.micros;
                        units += compute.units;
                    }
                    answered += 1;
                    answers.insert(id.clone(), answer.text.clone());
                }
                Err(code) => *errors.entry((*code).to_owned()).or_default() += 1,
            }
        }
        let evaluation = dataset.evaluate_where(&answers, |q| asked.contains(q.id.as_str()));
        let per_answer = answered.max(1) as f64;
        reports.push(ExpertReport {
            expert_id: spec.id.clone(),
            backend: spec.backend.kind().into(),
            cost: spec.cost,
            em: evaluation.exact_match,
            f1: evaluation.f1,
            questions: evaluation.total,
            errors,
            mean_latency_us: latency.mean(),
            p99_latency_us: latency.value_at_quantile(0.99),
            mean_backend_us: backend_us as f64 / per_answer,
            mean_compute_units: units / per_answer,
        });
    }
    Ok(reports)
}

/// Puts every question to the expert behind `channel`, `concurrency` calls in flight, and
/// returns the calls in question order.
pub async fn ask_every_question(
    channel: Channel,
    questions: Arc<Vec<(String, String, String)>>,
    concurrency: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Call>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (channel, questions, next, progress) = (
            channel.clone(),
            questions.clone(),
            next.clone(),
            progress.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut client = ExpertClient::new(channel);
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, question, context)) = questions.get(i) else {
                    break;
                };
                let mut request = tonic::Request::new(pb::AnswerRequest {
                    question: question.clone(),
                    context: context.clone(),
                    id: Some(id.clone()),
                });
                request.set_timeout(Duration::from_secs(30));
                let started = Instant::now();
                let result = client.answer(request).await;
                let latency_us = started.elapsed().as_micros() as u64;
                let result = result
                    .map(tonic::Response::into_inner)
                    .map_err(|status| code_name(status.code()));
                done.push((i, Call { latency_us, result }));
                progress.inc(1);
            }
            done
        }));
    }
    let mut calls: Vec<Option<Call>> = vec![None; questions.len()];
    for worker in workers {
        for (i, call) in worker.await? {
            calls[i] = Some(call);
        }
    }
    calls
        .into_iter()
        .map(|c| c.ok_or_else(|| anyhow::anyhow!("a question was never asked")))
        .collect()
}

pub fn progress_bar(enabled: bool, len: u64, label: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>12} {bar:40} {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// The reports as a text table.
pub fn report_table(reports: &[ExpertReport]) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:>7} {:>6} {:>6} {:>10} {:>10} {:>11} {:>9}  {}\n",
        "EXPERT",
        "BACKEND",
        "COST",
        "EM",
        "F1",
        "MEAN µs",
        "P99 µs",
        "BACKEND µs",
        "UNITS",
        "ERRORS"
    );
    for r in reports {
        let errors: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        out.push_str(&format!(
            "{:<12} {:<8} {:>7} {:>6.1} {:>6.1} {:>10.0} {:>10} {:>11.1} {:>9.1}  {}\n",
            r.expert_id,
            r.backend,
            r.cost,
            r.em,
            r.f1,
            r.mean_latency_us,
            r.p99_latency_us,
            r.mean_backend_us,
            r.mean_compute_units,
            if errors.is_empty() {
                "-".to_string()
            } else {
                errors.join(", ")
            }
        ));
    }
    out
}
