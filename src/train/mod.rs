//! The training side of Learning-to-Defer: label a data set by running every expert
//! ([`labels`]), split it by article ([`split`]), fit the rejector bank with the surrogate
//! ([`fit`]), and evaluate it beside honest baselines on the test articles ([`eval`]).

pub mod calibrate;
pub mod cascade;
pub mod crm;
pub mod eval;
pub mod fit;
pub mod labels;
pub mod offpolicy;
pub mod plot;
pub mod select;
pub mod split;
pub mod table;

use crate::core::features::{Features, HASH_BUCKETS, dense_len, featurize};
use crate::core::learned::{
    BankEntry, LossKind, Mode, POLICY_FORMAT, PolicyFile, SplitRecord, Standardization,
    TrainingRecord,
};
use labels::{LabelRecord, Labels};

/// How to train a bank of rejectors from labels.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub lambdas: Vec<f64>,
    /// The bank entry served by default (default: the first lambda).
    pub default_lambda: Option<f64>,
    pub mode: Mode,
    /// Defer mode: expert ids that always run first.
    pub probes: Vec<String>,
    /// Cascade mode: the most experts asked before an answer is kept.
    pub stages: usize,
    pub loss: LossKind,
    pub split_seed: u64,
    pub test_fraction: f64,
    pub fit: fit::FitConfig,
}

/// Positions of `probes` among the labels' experts.
pub fn probe_indices(labels: &Labels, probes: &[String]) -> anyhow::Result<Vec<usize>> {
    probes
        .iter()
        .map(|p| {
            labels
                .header
                .experts
                .iter()
                .position(|a| &a.id == p)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "probe {p:?} is not an expert of the labels ({})",
                        expert_ids(labels)
                    )
                })
        })
        .collect()
}

fn expert_ids(labels: &Labels) -> String {
    labels
        .header
        .experts
        .iter()
        .map(|a| a.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The featurizer's output for a labelled question, with the probes' recorded answers.
pub fn record_features(record: &LabelRecord, probes: &[usize]) -> Features {
    featurize(
        &record.question,
        &record.context,
        &probe_answers(record, probes),
    )
}

/// What the probe experts answered to a labelled question, in probe order.
pub fn probe_answers<'a>(record: &'a LabelRecord, probes: &[usize]) -> Vec<Option<&'a str>> {
    probes
        .iter()
        .map(|&p| record.experts[p].answer.as_deref())
        .collect()
}

/// Cost charged for choosing agent `j` beyond the probes (which are always charged).
pub fn extra_cost(labels: &Labels, probes: &[usize], j: usize) -> f64 {
    if probes.contains(&j) {
        0.0
    } else {
        labels.header.experts[j].cost
    }
}

/// Trains the bank. Only questions of the train articles are seen.
pub fn train(labels: &Labels, options: &TrainOptions) -> anyhow::Result<PolicyFile> {
    anyhow::ensure!(
        options.test_fraction >= 0.0 && options.test_fraction < 1.0,
        "--test-fraction must be in [0, 1), got {}",
        options.test_fraction
    );
    let titles: Vec<String> = labels.records.iter().map(|r| r.title.clone()).collect();
    let (train_articles, test_articles) =
        split::split_by_article(&titles, options.split_seed, options.test_fraction);
    train_on(labels, options, train_articles, test_articles)
}

/// [`train`] on the given articles (the policy file records them as its split).
pub fn train_on(
    labels: &Labels,
    options: &TrainOptions,
    train_articles: Vec<String>,
    test_articles: Vec<String>,
) -> anyhow::Result<PolicyFile> {
    check_lambdas(&options.lambdas)?;
    match options.mode {
        Mode::Defer => anyhow::ensure!(!options.probes.is_empty(), "defer mode needs --probes"),
        Mode::Route | Mode::Cascade => {
            anyhow::ensure!(options.probes.is_empty(), "--probes is for --mode defer")
        }
    }
    let probes = probe_indices(labels, &options.probes)?;
    let train_records = labels.in_articles(&train_articles);
    anyhow::ensure!(
        !train_records.is_empty(),
        "no training questions: the split left no article to train on"
    );
    if options.mode == Mode::Cascade {
        let (standardize, bank) = cascade::train(
            labels,
            &train_records,
            &options.lambdas,
            options.stages,
            options.loss,
            &options.fit,
        )?;
        let examples = train_records.len();
        return Ok(policy_file(
            labels,
            options,
            (train_articles, test_articles),
            standardize,
            bank,
            examples,
        ));
    }

    let features: Vec<Features> = train_records
        .iter()
        .map(|r| record_features(r, &probes))
        .collect();
    let d = dense_len(probes.len());
    let standardize = standardization(&features, d);

    let agents = labels.header.experts.len();
    let max_cost = labels
        .header
        .experts
        .iter()
        .map(|a| a.cost)
        .fold(0.0, f64::max);
    let examples: Vec<fit::Example> = train_records
        .iter()
        .zip(features)
        .map(|(r, mut f)| {
            standardize.apply(&mut f.dense);
            fit::Example {
                dense: f.dense,
                hashed: f.hashed,
                loss: r.experts.iter().map(|e| e.loss(options.loss)).collect(),
                price: (0..agents)
                    .map(|j| extra_cost(labels, &probes, j) / max_cost)
                    .collect(),
                valid: Vec::new(),
            }
        })
        .collect();
    let fit_config = fit::FitConfig {
        probe_features_from: crate::core::features::DENSE_NAMES.len(),
        ..options.fit
    };
    let bank = on_every_core(&options.lambdas, |lambda| BankEntry {
        lambda,
        rejector: fit::fit(&examples, agents, d, HASH_BUCKETS, lambda, &fit_config),
        later: Vec::new(),
        calibration: Vec::new(),
    });
    Ok(policy_file(
        labels,
        options,
        (train_articles, test_articles),
        standardize,
        bank,
        examples.len(),
    ))
}

/// `fit` of each of `lambdas`, in order, computed on every core: the lambdas of a bank are
/// independent, and the result does not depend on how many cores there are.
pub fn on_every_core<T: Send>(lambdas: &[f64], fit: impl Fn(f64) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(lambdas.len())
        .max(1);
    let mut out: Vec<Option<T>> = (0..lambdas.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let fit = &fit;
                scope.spawn(move || {
                    (t..lambdas.len())
                        .step_by(threads)
                        .map(|k| (k, fit(lambdas[k])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (k, value) in h.join().expect("a fitting thread panicked") {
                out[k] = Some(value);
            }
        }
    });
    out.into_iter().flatten().collect()
}

/// What the policy file records of its fitting on `examples` questions.
pub fn training_record(fit: &fit::FitConfig, examples: usize) -> TrainingRecord {
    TrainingRecord {
        seed: fit.seed,
        epochs: fit.epochs,
        learning_rate: fit.learning_rate,
        l2: fit.l2,
        l2_hashed: fit.l2_hashed,
        l2_probe: fit.l2_probe,
        batch_size: fit.batch_size.min(examples),
        examples,
    }
}

/// The lambdas a bank is trained at when none are given, in ascending order: 0, then 2^(−k/2)
/// for k = 14 down to 2 (1/128 up to 0.5, each about 1.41 times the one before), to three
/// significant digits.
///
/// Lambda prices an expert's compute in errors: asking the most expensive expert costs lambda
/// of one wrong answer (prices are divided by the highest). A geometric grid over that range is
/// fixed here, before any data is seen, and serves any pool; which of its entries a policy
/// keeps, and which it serves, is chosen on validation articles (`train::select`).
pub fn default_lambdas() -> Vec<f64> {
    std::iter::once(0.0)
        .chain(
            (2..=14)
                .rev()
                .map(|k| three_digits(2f64.powf(-f64::from(k) / 2.0))),
        )
        .collect()
}

/// `x` to three significant digits: the lambdas a policy file and its reports show.
pub fn three_digits(x: f64) -> f64 {
    format!("{x:.2e}")
        .parse::<f64>()
        .expect("a float prints as one")
}

/// A bank's lambdas: at least one, each finite and >= 0.
pub fn check_lambdas(lambdas: &[f64]) -> anyhow::Result<()> {
    anyhow::ensure!(!lambdas.is_empty(), "--lambda needs at least one value");
    if let Some(l) = lambdas.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
        anyhow::bail!("lambda must be a finite number >= 0, got {l}");
    }
    Ok(())
}

/// The mean and standard deviation of each of the `d` dense features over `features` (a
/// constant feature is left unscaled).
pub fn standardization(features: &[Features], d: usize) -> Standardization {
    let n = features.len().max(1) as f64;
    let mut mean = vec![0.0; d];
    for f in features {
        for (m, x) in mean.iter_mut().zip(&f.dense) {
            *m += x / n;
        }
    }
    let mut std = vec![0.0; d];
    for f in features {
        for ((s, x), m) in std.iter_mut().zip(&f.dense).zip(&mean) {
            *s += (x - m) * (x - m) / n;
        }
    }
    let std: Vec<f64> = std
        .into_iter()
        .map(|v| if v.sqrt() > 1e-9 { v.sqrt() } else { 1.0 })
        .collect();
    Standardization { mean, std }
}

fn policy_file(
    labels: &Labels,
    options: &TrainOptions,
    (train_articles, test_articles): (Vec<String>, Vec<String>),
    standardize: Standardization,
    bank: Vec<BankEntry>,
    examples: usize,
) -> PolicyFile {
    PolicyFile {
        format: POLICY_FORMAT.into(),
        featurizer: crate::core::features::FEATURIZER_VERSION.into(),
        mode: options.mode,
        probes: options.probes.clone(),
        experts: labels.header.experts.clone(),
        stages: if options.mode == Mode::Cascade {
            options.stages
        } else {
            0
        },
        loss: options.loss,
        split: SplitRecord {
            seed: options.split_seed,
            test_fraction: options.test_fraction,
            train_articles,
            test_articles,
        },
        training: training_record(&options.fit, examples),
        standardize,
        default_lambda: options.default_lambda.unwrap_or(options.lambdas[0]),
        bank,
    }
}
