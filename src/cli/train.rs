//! `l2d label`, `l2d train`, `l2d eval`, `l2d score`, `l2d experts-report`: the training side.

use crate::defaults::default_pool_path;
use crate::pool_file::PoolFile;
use crate::squad::Dataset;
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ExpertsReportArgs {
    /// Pool file (default: pools/squad-v1.1-live.toml, the default pool plus the live readers).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// The SQuAD-format data set to ask.
    #[arg(long)]
    pub data: PathBuf,
    /// Ask only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calls in flight per expert.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Pool file (default: pools/squad-v1.1.toml).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// The SQuAD-format data set (v1.1 or v2.0).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the labels (JSON Lines).
    #[arg(long)]
    pub out: PathBuf,
    /// Label only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Label only these experts of the pool (comma-separated ids, in pool order); default: all.
    #[arg(long, value_delimiter = ',')]
    pub experts: Vec<String>,
    /// Calls in flight per expert.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Decide from the query alone, before any expert runs.
    Route,
    /// Run the probe experts first; their answers are features; keep one or defer.
    Defer,
    /// After each answer, keep an answer seen or ask another expert (up to --stages).
    Cascade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossArg {
    Em,
    F1,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Every expert's answer to every query (`l2d label`). With --from-log: only the split
    /// (the log's decisions on its training articles are learned from, and its test articles
    /// are recorded for `l2d eval`) and the experts.
    #[arg(long, required_unless_present = "from_log")]
    pub labels: Option<PathBuf>,
    /// Learn a route policy from a decision log's rewarded decisions instead of labels
    /// (logged with --decision-log-queries, outcomes reported with `l2d outcome`):
    /// counterfactual risk minimisation with clipped propensities.
    #[arg(long, conflicts_with_all = ["mode", "at_cost", "probes", "stages"])]
    pub from_log: Option<PathBuf>,
    /// With --from-log and no --labels: the pool file naming the experts and their costs.
    #[arg(long, requires = "from_log")]
    pub pool: Option<PathBuf>,
    /// With --from-log: propensities below this count as this (importance weights at most
    /// its inverse).
    #[arg(long, default_value_t = 0.01, requires = "from_log")]
    pub min_propensity: f64,
    /// Price(s) of compute, comma-separated: one rejector per value, all in one policy file
    /// (where the lambda is chosen on validation, only those not under the single experts' mix
    /// line there, plus up to four found between the two whose validation costs straddle the
    /// cost target). The default is 0 and a geometric grid from 1/128 to 0.5, fixed before any
    /// data is seen.
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        default_values_t = crate::train::default_lambdas()
    )]
    pub lambda: Vec<f64>,
    /// The lambda served by default (default: the first of --lambda).
    #[arg(long)]
    pub default_lambda: Option<f64>,
    /// The mode; without it, the recommended one for this pool: route, defer (probes among the
    /// cheapest experts) and cascade are each trained four times, each time without a quarter
    /// of the training articles, and compared on the quarters left out (validation), and the
    /// lambda served by default is the most accurate whose validation cost meets --at-cost.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// The cost target, as a fraction of the always-best expert's cost: the lambda served by
    /// default is the most accurate whose cost on validation articles is at most that (0.5
    /// without --mode; with --mode, only when given).
    #[arg(long, allow_negative_numbers = true)]
    pub at_cost: Option<f64>,
    /// Defer mode: expert ids that always run first, comma-separated (with --at-cost and none
    /// given, in a pool of three or more experts: a pair of the three cheapest, chosen on
    /// validation).
    #[arg(long, value_delimiter = ',')]
    pub probes: Vec<String>,
    /// Cascade mode: the most experts asked before an answer is kept (default: 3, or the
    /// number of experts when fewer; with --at-cost, 2 or 3 chosen on validation).
    #[arg(long)]
    pub stages: Option<usize>,
    #[arg(long, value_enum, default_value = "em")]
    pub loss: LossArg,
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the example order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seed of the train/test split by article.
    #[arg(long, default_value_t = 1)]
    pub split_seed: u64,
    /// Share of articles held out for evaluation.
    #[arg(long, default_value_t = 0.5)]
    pub test_fraction: f64,
    /// Passes over the training set.
    #[arg(long, default_value_t = 500, value_parser = at_least_one)]
    pub epochs: usize,
    /// Adam's initial step (decayed to zero along a cosine).
    #[arg(long, default_value_t = 0.05, value_parser = positive, allow_negative_numbers = true)]
    pub learning_rate: f64,
    /// L2 penalty on the weights of the question features. Where the lambda is chosen on
    /// validation (no --mode, or --at-cost), the L2 strengths are chosen there too: these and
    /// --l2-hashed, then --l2-probe, each times 0.3, 1 and 3.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub l2: f64,
    /// L2 penalty on the hashed question n-gram weights (default: --l2).
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    pub l2_hashed: Option<f64>,
    /// Defer and cascade modes: L2 penalty on the weights of the features of the answers seen.
    #[arg(long, default_value_t = 0.01, value_parser = non_negative, allow_negative_numbers = true)]
    pub l2_probe: f64,
    /// Examples per Adam step (0: the whole training set).
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
}

/// A count of passes: zero would write a policy of untrained (all-zero) weights.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number above zero (a step size).
fn positive(text: &str) -> Result<f64, String> {
    finite_where(text, |x| x > 0.0, "above 0")
}

/// A finite number of at least zero (a penalty's strength).
fn non_negative(text: &str) -> Result<f64, String> {
    finite_where(text, |x| x >= 0.0, "of at least 0")
}

/// `text` as a finite number that passes `bound`, which `says` names.
fn finite_where(text: &str, bound: fn(f64) -> bool, says: &str) -> Result<f64, String> {
    let x: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if x.is_finite() && bound(x) {
        Ok(x)
    } else {
        Err(format!("must be a finite number {says}, got {x}"))
    }
}

#[derive(Debug, Args)]
pub struct CvArgs {
    #[arg(long)]
    pub labels: PathBuf,
    /// Outer folds (by article).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// The cost target: lambda and mode are chosen for a validation cost of at most this
    /// fraction of the always-best expert's cost.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub at_cost: f64,
    /// Seed of the assignment of articles to folds (the inner validation folds are drawn from
    /// --split-seed).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as Markdown here.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// The hand-written cascade baseline: first,second,fallback expert ids.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "match-lstm,rnet-plus,bert-large"
    )]
    pub cascade: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Labels (every expert's answer to every question); with --from-log, optional: without
    /// them the rewards are the outcomes reported to the scheduler.
    #[arg(long, required_unless_present = "from_log")]
    pub labels: Option<PathBuf>,
    #[arg(long)]
    pub policy: PathBuf,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as Markdown here.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// Write the EM-against-cost plot (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Estimate the policy's reward from a scheduler's decision log instead (off-policy: IPS,
    /// SNIPS, doubly robust).
    #[arg(long)]
    pub from_log: Option<PathBuf>,
    /// The hand-written cascade baseline: first,second,fallback expert ids.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "match-lstm,rnet-plus,bert-large"
    )]
    pub cascade: Vec<String>,
    /// Price waiting as the scheduler does, at this pool file's mean service times (zero
    /// load): the choices are then those `l2d up --pool` serves. Unpriced without it.
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// With --pool: accuracy points one second of waiting is worth (as `l2d up --wait-price`).
    #[arg(long, default_value_t = crate::core::decision::DEFAULT_WAIT_PRICE * 100.0, requires = "pool")]
    pub wait_price: f64,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The SQuAD-format data set (v1.1 or v2.0).
    #[arg(long)]
    pub data: PathBuf,
    /// Predictions: a JSON object {question id: answer text}.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Print one JSON object (exact_match, f1, total, missing; HasAns/NoAns on v2.0).
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn experts_report(args: ExpertsReportArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let pool_path = args
        .pool
        .unwrap_or_else(|| default_pool_path().with_file_name("squad-v1.1-live.toml"));
    let pool = PoolFile::load(&pool_path)?;
    let dataset = Dataset::load(&args.data)?;
    let options = crate::report::ReportOptions {
        limit: args.limit,
        concurrency: args.concurrency,
        progress: std::io::stderr().is_terminal(),
    };
    let reports = crate::report::experts_report(&pool, &dataset, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", crate::report::report_table(&reports));
    }
    Ok(())
}

pub(super) async fn label(args: LabelArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let pool = PoolFile::load(&args.pool.unwrap_or_else(default_pool_path))?;
    let pool = if args.experts.is_empty() {
        pool
    } else {
        pool.only(&args.experts)
            .map_err(|e| anyhow::anyhow!("--experts: {e}"))?
    };
    let dataset = Dataset::load(&args.data)?;
    let options = crate::train::labels::LabelOptions {
        concurrency: args.concurrency,
        limit: args.limit,
        progress: std::io::stderr().is_terminal(),
        articles: None,
    };
    let started = std::time::Instant::now();
    let labels =
        crate::train::labels::label(&pool, &dataset, &args.data.display().to_string(), &options)
            .await?;
    labels.write(&args.out)?;
    eprintln!(
        "l2d: labelled {} questions with {} experts in {:.1}s -> {}",
        labels.records.len(),
        labels.header.experts.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Training settings shared by `l2d train` and `l2d cv` (the built-in defaults for cv).
fn base_options(
    args: &TrainArgs,
    labels: &crate::train::labels::Labels,
) -> crate::train::TrainOptions {
    use crate::core::learned::{LossKind, Mode};
    crate::train::TrainOptions {
        lambdas: args.lambda.clone(),
        default_lambda: args.default_lambda,
        mode: match args.mode {
            None | Some(ModeArg::Route) => Mode::Route,
            Some(ModeArg::Defer) => Mode::Defer,
            Some(ModeArg::Cascade) => Mode::Cascade,
        },
        probes: args.probes.clone(),
        stages: args
            .stages
            .unwrap_or_else(|| labels.header.experts.len().min(3)),
        loss: match args.loss {
            LossArg::Em => LossKind::Em,
            LossArg::F1 => LossKind::F1,
        },
        split_seed: args.split_seed,
        test_fraction: args.test_fraction,
        fit: fit_config(args),
    }
}

/// The fitting settings of `l2d train`'s flags.
fn fit_config(args: &TrainArgs) -> crate::train::fit::FitConfig {
    crate::train::fit::FitConfig {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        l2: args.l2,
        l2_hashed: args.l2_hashed.unwrap_or(args.l2),
        l2_probe: args.l2_probe,
        // Set by train() from the featurizer's layout.
        probe_features_from: usize::MAX,
        batch_size: if args.batch_size == 0 {
            usize::MAX
        } else {
            args.batch_size
        },
        seed: args.seed,
    }
}

pub(super) fn train(args: TrainArgs) -> anyhow::Result<()> {
    if let Some(log) = &args.from_log {
        return train_from_log(&args, log);
    }
    let labels = crate::train::labels::Labels::read(
        args.labels
            .as_deref()
            .context("--labels is needed (or --from-log)")?,
    )?;
    let options = base_options(&args, &labels);
    let started = std::time::Instant::now();
    if args.mode.is_some() {
        anyhow::ensure!(
            args.stages.is_none() || args.mode == Some(ModeArg::Cascade),
            "--stages is for --mode cascade"
        );
    } else {
        anyhow::ensure!(
            args.probes.is_empty() && args.stages.is_none(),
            "--probes and --stages go with --mode: without it, the mode, the probes and the \
             lambda are chosen on validation articles"
        );
    }
    let policy = match (args.mode, args.at_cost) {
        (Some(_), None) => {
            let (policy, calibrated) = crate::train::select::train_calibrated(&labels, &options)?;
            if !calibrated {
                eprintln!(
                    "l2d: warning: fewer than two training articles, so no validation articles to \
                     calibrate on: the policy's scores order the experts but are not expected costs"
                );
            }
            policy
        }
        (mode, at_cost) => {
            anyhow::ensure!(
                args.default_lambda.is_none(),
                "--default-lambda is chosen on validation articles here: give --mode without \
                 --at-cost to set it"
            );
            anyhow::ensure!(
                options.test_fraction >= 0.0 && options.test_fraction < 1.0,
                "--test-fraction must be in [0, 1), got {}",
                options.test_fraction
            );
            let titles: Vec<String> = labels.records.iter().map(|r| r.title.clone()).collect();
            let (train_articles, test_articles) = crate::train::split::split_by_article(
                &titles,
                options.split_seed,
                options.test_fraction,
            );
            // With --mode, the candidates of that mode; the probes (defer) or the number of
            // stages (cascade) given are kept, the others chosen on validation too.
            let among = match mode {
                None => crate::train::select::candidates(&labels),
                Some(_) => crate::train::select::candidates_in_mode(
                    &labels,
                    options.mode,
                    &options.probes,
                    args.stages,
                ),
            };
            let (policy, selection) = crate::train::select::train_recommended(
                &labels,
                &options,
                train_articles,
                test_articles,
                at_cost.unwrap_or(0.5),
                among,
            )
            .context(
                "the lambda (and without --mode, the mode) is chosen on validation articles",
            )?;
            for v in &selection.candidates {
                eprintln!(
                    "l2d: validation ({} articles in {} folds): {:<40} lambda {:<6} {:.2} EM at cost {:.2}",
                    selection.validation_articles,
                    selection.validation_folds,
                    v.candidate.name(),
                    v.lambda,
                    v.em,
                    v.mean_cost
                );
            }
            // Route mode reads no answer: its answer-feature strength is not tuned, nor shown.
            let reads_answers = selection.chosen.mode.reads_answers();
            let strengths = |r: crate::train::select::Regularisation| {
                let question = format!("L2 {} (question), {} (n-grams)", r.l2, r.l2_hashed);
                if reads_answers {
                    format!("{question}, {} (answers)", r.l2_answers)
                } else {
                    question
                }
            };
            for v in &selection.tuning {
                eprintln!(
                    "l2d: validation: {}: lambda {:<6} {:.2} EM at cost {:.2}",
                    strengths(v.regularisation),
                    v.lambda,
                    v.em,
                    v.mean_cost
                );
            }
            let tuned = selection.tuned();
            if tuned.all_under_line {
                eprintln!(
                    "l2d: warning: every lambda of {} falls under the single experts' mix line on \
                     validation (a mix of experts would serve each cost better); all are kept",
                    selection.chosen.name()
                );
            }
            let kept = if tuned.kept.len() == tuned.points.len() {
                format!("all {} lambdas kept", tuned.points.len())
            } else {
                format!(
                    "{} of {} lambdas kept (the others fall under the single experts' mix line on \
                     validation)",
                    tuned.kept.len(),
                    tuned.points.len()
                )
            };
            eprintln!(
                "l2d: chose {} at lambda {} (validation cost at most {:.2}), {}; {kept}",
                selection.chosen.name(),
                selection.lambda,
                selection.target_cost,
                strengths(tuned.regularisation),
            );
            policy
        }
    };
    std::fs::write(&args.out, serde_json::to_string(&policy)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "l2d: trained {} rejector(s) on {} questions of {} train articles in {:.1}s -> {}",
        policy.bank.len(),
        policy.training.examples,
        policy.split.train_articles.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// `l2d train --from-log`: counterfactual risk minimisation on the log's rewarded decisions.
fn train_from_log(args: &TrainArgs, path: &std::path::Path) -> anyhow::Result<()> {
    use crate::core::learned::{Agent, SplitRecord};
    use std::collections::HashSet;
    let started = std::time::Instant::now();
    let log = crate::train::offpolicy::read_log(path)?;
    let labels = args
        .labels
        .as_deref()
        .map(crate::train::labels::Labels::read)
        .transpose()?;
    let (experts, split, train_ids): (Vec<Agent>, SplitRecord, Option<HashSet<String>>) =
        match &labels {
            Some(labels) => {
                let titles: Vec<String> = labels.records.iter().map(|r| r.title.clone()).collect();
                let (train_articles, test_articles) = crate::train::split::split_by_article(
                    &titles,
                    args.split_seed,
                    args.test_fraction,
                );
                let ids = labels
                    .in_articles(&train_articles)
                    .iter()
                    .map(|r| r.id.clone())
                    .collect();
                let split = SplitRecord {
                    seed: args.split_seed,
                    test_fraction: args.test_fraction,
                    train_articles,
                    test_articles,
                };
                (labels.header.experts.clone(), split, Some(ids))
            }
            None => {
                let pool = args.pool.as_deref().context(
                    "--from-log needs the experts and their costs: give --pool POOL (or --labels)",
                )?;
                let pool = crate::pool_file::PoolFile::load(pool)?;
                let experts = pool
                    .experts
                    .iter()
                    .map(|e| Agent {
                        id: e.id.clone(),
                        cost: e.cost,
                    })
                    .collect();
                let split = SplitRecord {
                    seed: args.split_seed,
                    test_fraction: 0.0,
                    train_articles: Vec::new(),
                    test_articles: Vec::new(),
                };
                (experts, split, None)
            }
        };
    let options = crate::train::crm::CrmOptions {
        lambdas: args.lambda.clone(),
        default_lambda: args.default_lambda,
        min_propensity: args.min_propensity,
        fit: fit_config(args),
    };
    let (policy, usage) =
        crate::train::crm::train_from_log(&log, &experts, &options, split, |d| {
            train_ids
                .as_ref()
                .is_none_or(|ids| d.query_id.as_ref().is_some_and(|q| ids.contains(q)))
        })?;
    std::fs::write(&args.out, serde_json::to_string(&policy)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "l2d: trained {} rejector(s) from {} of {} logged decisions ({} with an outcome, {} of \
         them without their query, {} sent to experts not in the pool) in {:.1}s -> {}",
        policy.bank.len(),
        usage.used,
        usage.logged,
        usage.rewarded,
        usage.without_query,
        usage.unknown_expert,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

pub(super) fn cv(args: CvArgs) -> anyhow::Result<()> {
    use clap::Parser;
    let labels = crate::train::labels::Labels::read(&args.labels)?;
    // The training settings are `l2d train`'s defaults.
    let defaults =
        crate::cli::Cli::try_parse_from(["l2d", "train", "--labels", "-", "--out", "-"])?;
    let crate::cli::Command::Train(train_args) = defaults.command else {
        unreachable!("parsed as train");
    };
    let base = base_options(&train_args, &labels);
    let cascade: [String; 3] = args
        .cascade
        .try_into()
        .map_err(|_| anyhow::anyhow!("--cascade takes three expert ids: first,second,fallback"))?;
    let started = std::time::Instant::now();
    let report = crate::train::select::cross_validate(
        &labels,
        &base,
        &crate::train::select::CvOptions {
            folds: args.folds,
            at_cost: args.at_cost,
            seed: args.seed,
            eval: crate::train::eval::EvalOptions {
                cascade,
                ..Default::default()
            },
        },
    )?;
    let markdown = crate::train::select::to_markdown(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.md {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{markdown}");
    eprintln!(
        "l2d: cross-validated in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read policy file {}", args.policy.display()))?;
    let policy = crate::core::learned::PolicyFile::parse(&text)
        .with_context(|| format!("policy file {}", args.policy.display()))?;
    let labels = args
        .labels
        .as_deref()
        .map(crate::train::labels::Labels::read)
        .transpose()?;
    if let Some(log_path) = &args.from_log {
        let log = crate::train::offpolicy::read_log(log_path)?;
        let json = match &labels {
            Some(labels) => serde_json::to_string_pretty(
                &crate::train::offpolicy::evaluate_from_log(&log, labels, &policy)?,
            )?,
            None => serde_json::to_string_pretty(&crate::train::offpolicy::evaluate_log_alone(
                &log, &policy, 1,
            )?)?,
        };
        if let Some(path) = &args.json {
            std::fs::write(path, &json)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        println!("{json}");
        return Ok(());
    }
    let labels = labels.context("--labels is needed to evaluate on the test articles")?;
    let cascade: [String; 3] = args
        .cascade
        .try_into()
        .map_err(|_| anyhow::anyhow!("--cascade takes three expert ids: first,second,fallback"))?;
    anyhow::ensure!(
        args.wait_price.is_finite() && args.wait_price >= 0.0,
        "--wait-price must be a finite number >= 0 (accuracy points per second), got {}",
        args.wait_price
    );
    let waiting = match &args.pool {
        Some(path) => crate::pool_file::PoolFile::load(path)?.waiting(args.wait_price / 100.0),
        None => Default::default(),
    };
    let report = crate::train::eval::evaluate(
        &labels,
        &policy,
        &crate::train::eval::EvalOptions { cascade, waiting },
    )?;
    let markdown = crate::train::eval::to_markdown(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.md {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::train::plot::svg(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{markdown}");
    Ok(())
}

pub(super) fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.data)?;
    let predictions = crate::squad::load_predictions(&args.predictions)?;
    let evaluation = dataset.evaluate(&predictions);
    if args.json {
        println!("{}", serde_json::to_string(&evaluation)?);
        return Ok(());
    }
    println!(
        "exact_match {:.2}  f1 {:.2}  total {}",
        evaluation.exact_match, evaluation.f1, evaluation.total
    );
    for (name, split) in [("HasAns", evaluation.has_ans), ("NoAns", evaluation.no_ans)] {
        if let Some(split) = split {
            println!(
                "{name:<11} {:.2}  f1 {:.2}  total {}",
                split.exact, split.f1, split.total
            );
        }
    }
    if evaluation.missing > 0 {
        println!(
            "{} of {} questions have no prediction and score 0",
            evaluation.missing, evaluation.total
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// `l2d train`'s error for these flags, or `None` when they parse.
    fn refusal(flags: &[&str]) -> Option<String> {
        let args = ["l2d", "train", "--labels", "l", "--out", "p"];
        crate::cli::Cli::try_parse_from(args.iter().chain(flags))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn fitting_settings_that_would_train_nothing_are_refused() {
        for (flags, says) in [
            (&["--epochs", "0"][..], "must be at least 1"),
            (
                &["--learning-rate", "0"],
                "must be a finite number above 0, got 0",
            ),
            (&["--learning-rate", "nan"], "got NaN"),
            (
                &["--l2", "-0.5"],
                "must be a finite number of at least 0, got -0.5",
            ),
            (&["--l2-hashed", "inf"], "got inf"),
            (&["--l2-probe", "-1"], "got -1"),
            (&["--learning-rate", "-0.1"], "got -0.1"),
        ] {
            let err = refusal(flags).unwrap_or_else(|| panic!("{flags:?} parsed"));
            assert!(err.contains(says), "{flags:?}: {err}");
        }
        for flags in [
            &["--epochs", "1"][..],
            &["--learning-rate", "0.01"],
            &["--l2", "0"],
            &["--l2-hashed", "0.3", "--l2-probe", "0"],
        ] {
            assert_eq!(refusal(flags), None, "{flags:?}");
        }
    }
}
