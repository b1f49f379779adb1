//! Honest selection, and `l2d cv`.
//!
//! Every choice — the mode, defer mode's probes, the cascade's number of stages, the L2
//! strengths, which lambdas the bank keeps, the lambda served — is made on *validation*
//! articles carved out of the training articles, never on test articles:
//!
//! 1. the training articles are split again by article into [`VALIDATION_FOLDS`] folds
//!    ([`validation_folds`]);
//! 2. each candidate ([`candidates`]: one-shot route, fixed-probe defer with each pair of the
//!    three cheapest experts as probes, the cascade asking up to two and up to three experts)
//!    is trained once per fold on the other folds' articles, and its whole bank evaluated on
//!    the fold's: every training article is a validation article once, out of fold;
//! 3. per candidate, the bank keeps the entries not under the single experts' mix line there
//!    ([`worth_serving`]), and the lambda served is the most accurate kept entry whose
//!    validation mean cost is at most the cost target (a fraction of the always-best expert's
//!    cost: the expert most accurate on the training articles). Where the validation cost
//!    crosses the target between two grid lambdas, lambdas between them are trained and
//!    validated too ([`towards_target`], [`REFINE_ROUNDS`] rounds), so the entry served sits
//!    near the target rather than wherever the grid lands; the candidate most accurate under
//!    the target wins;
//! 4. the winner's L2 strengths are tuned the same way, one group of features at a time
//!    ([`L2_FACTORS`]).
//!
//! Candidates know nothing of the expert names or the data: only costs and the labels.
//! `l2d cv` wraps this in K outer folds by article: per fold, selection on the fold's training
//! articles, then the chosen candidate trained on all of them and evaluated on the fold's test
//! articles, beside the baselines.

use super::calibrate::calibrate;
use super::eval::{
    CurvePoint, EvalOptions, EvalReport, MixLine, Row, choices_at, evaluate, single_experts,
};
use super::fit::FitConfig;
use super::labels::{LabelRecord, Labels};
use super::split::split_by_article;
use super::table::{AgreementTable, Answered, answered};
use super::{TrainOptions, probe_indices, train_on};
use crate::core::learned::{LossKind, Mode, PolicyFile};
use serde::Serialize;

/// Share of the training articles held out for validation where one split is used (the
/// calibration of `l2d train --mode M` without a cost target).
pub const VALIDATION_FRACTION: f64 = 0.25;

/// Folds the training articles are validated in ([`validation_folds`]): each candidate is
/// trained this many times, each time on three quarters of the articles, and every training
/// article is validated on once. One split of a quarter left the candidates' order to chance:
/// about 2,000 questions, where the defer and cascade candidates differ by tenths of a point.
pub const VALIDATION_FOLDS: usize = 4;

/// A configuration the selection may choose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub mode: Mode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub stages: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Candidate {
    pub fn name(&self) -> String {
        match self.mode {
            Mode::Route => "route".into(),
            Mode::Defer => format!("defer ({})", self.probes.join(", ")),
            Mode::Cascade => format!("cascade (up to {} experts)", self.stages),
        }
    }

    fn options(&self, base: &TrainOptions) -> TrainOptions {
        TrainOptions {
            mode: self.mode,
            probes: self.probes.clone(),
            stages: self.stages,
            ..base.clone()
        }
    }
}

/// The candidates for a pool: route; defer with each pair of the three cheapest experts as
/// probes (with three or more experts); the cascade asking up to two experts, and up to three
/// (with three or more experts).
pub fn candidates(labels: &Labels) -> Vec<Candidate> {
    let experts = &labels.header.experts;
    let mut by_cost: Vec<usize> = (0..experts.len()).collect();
    by_cost.sort_by(|&a, &b| experts[a].cost.total_cmp(&experts[b].cost));
    let mut out = vec![Candidate {
        mode: Mode::Route,
        probes: Vec::new(),
        stages: 0,
    }];
    if experts.len() >= 3 {
        let cheap = &by_cost[..3];
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let mut pair = [cheap[a], cheap[b]];
            pair.sort_unstable();
            out.push(Candidate {
                mode: Mode::Defer,
                probes: pair.iter().map(|&j| experts[j].id.clone()).collect(),
                stages: 0,
            });
        }
    }
    for stages in 2..=experts.len().min(3) {
        out.push(Candidate {
            mode: Mode::Cascade,
            probes: Vec::new(),
            stages,
        });
    }
    out
}

/// The candidates `l2d train --mode MODE --at-cost F` chooses among: those of [`candidates`] in
/// `mode`, with the probes given (when any) and the number of stages given (when any); the one
/// candidate they describe when [`candidates`] holds none such (probes in another order, or
/// not among the three cheapest).
pub fn candidates_in_mode(
    labels: &Labels,
    mode: Mode,
    probes: &[String],
    stages: Option<usize>,
) -> Vec<Candidate> {
    let among: Vec<Candidate> = candidates(labels)
        .into_iter()
        .filter(|c| {
            c.mode == mode
                && (probes.is_empty() || c.probes == probes)
                && stages.is_none_or(|s| c.stages == s)
        })
        .collect();
    if among.is_empty() {
        let default_stages = labels.header.experts.len().min(3);
        vec![Candidate {
            mode,
            probes: probes.to_vec(),
            stages: if mode == Mode::Cascade {
                stages.unwrap_or(default_stages)
            } else {
                0
            },
        }]
    } else {
        among
    }
}

/// The L2 strengths of a fit: the ones the selection tunes on validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Regularisation {
    /// On the question's dense features.
    pub l2: f64,
    /// On the question's hashed n-grams.
    pub l2_hashed: f64,
    /// On the features of the answers seen (defer and cascade modes).
    pub l2_answers: f64,
}

impl Regularisation {
    pub fn of(fit: &FitConfig) -> Self {
        Self {
            l2: fit.l2,
            l2_hashed: fit.l2_hashed,
            l2_answers: fit.l2_probe,
        }
    }

    pub fn apply(self, fit: FitConfig) -> FitConfig {
        FitConfig {
            l2: self.l2,
            l2_hashed: self.l2_hashed,
            l2_probe: self.l2_answers,
            ..fit
        }
    }
}

/// Whether a (lambda, EM, cost) point is on or over the mix line (to rounding).
fn over_the_line((_, em, cost): (f64, f64, f64), mix: &MixLine) -> bool {
    em + 1e-9 >= mix.at(cost).0
}

/// The factors the chosen candidate's L2 strengths are multiplied by on validation, one group
/// at a time: first the question features' (dense and hashed together), then, in the modes
/// that read answers, the answer features' (the defaults stay unless a factor does better).
pub const L2_FACTORS: [f64; 2] = [0.3, 3.0];

/// One candidate on the validation articles: its bank's points, and the one selected.
#[derive(Debug, Clone, Serialize)]
pub struct Validated {
    pub candidate: Candidate,
    pub regularisation: Regularisation,
    /// (lambda, EM, mean cost) per bank entry, on the validation articles.
    pub points: Vec<(f64, f64, f64)>,
    /// The lambdas of the entries worth serving ([`worth_serving`]), in bank order.
    pub kept: Vec<f64>,
    /// No entry is over the mix line: all are kept ([`worth_serving`]).
    pub all_under_line: bool,
    /// The kept entry selected for the cost target.
    pub lambda: f64,
    pub em: f64,
    pub mean_cost: f64,
}

impl Validated {
    /// The options that train this candidate with its regularisation and its kept entries,
    /// serving the selected one by default.
    pub fn options(&self, base: &TrainOptions) -> TrainOptions {
        let options = self.candidate.options(base);
        TrainOptions {
            lambdas: self.kept.clone(),
            default_lambda: Some(self.lambda),
            fit: self.regularisation.apply(options.fit),
            ..options
        }
    }

    /// More accurate under the cost target on validation; at equal EM, cheaper.
    fn beats(&self, other: &Validated) -> bool {
        self.em > other.em || (self.em == other.em && self.mean_cost < other.mean_cost)
    }
}

/// What the selection chose, and every candidate's validation figures.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub chosen: Candidate,
    pub lambda: f64,
    /// The chosen candidate's L2 strengths, tuned on validation.
    pub regularisation: Regularisation,
    /// The cost target the lambdas were chosen for (validation mean cost at most this).
    pub target_cost: f64,
    /// Articles validated on: all of the training articles, each once, out of fold.
    pub validation_articles: usize,
    /// Folds of the training articles: each candidate is trained once per fold without the
    /// fold's articles and validated on them ([`validation_folds`]).
    pub validation_folds: usize,
    /// Every candidate at the default L2 strengths.
    pub candidates: Vec<Validated>,
    /// The chosen candidate at each L2 strength tried, in the order tried (the default first).
    pub tuning: Vec<Validated>,
    /// The calibration maps of the tuned candidate's kept entries, by lambda, fitted on the
    /// validation articles (trained without them).
    #[serde(skip)]
    pub calibration: Vec<(f64, Vec<crate::core::calibration::Calibration>)>,
}

impl Selection {
    /// The chosen candidate at its tuned regularisation.
    pub fn tuned(&self) -> &Validated {
        self.tuning
            .iter()
            .find(|v| v.regularisation == self.regularisation)
            .expect("the chosen regularisation was validated")
    }
}

/// The lambdas of the bank entries worth serving: on validation, no random mix of single
/// experts (`mix`, the hull of their EM against cost) is more accurate at the entry's cost.
/// Such an entry is dropped from the bank: mixing the experts would serve that cost better.
/// When every entry falls under the line, all are kept (the bank is then no better than the
/// experts anywhere, and dropping all would leave nothing to serve).
pub fn worth_serving(points: &[(f64, f64, f64)], mix: &MixLine) -> Vec<f64> {
    let kept: Vec<f64> = points
        .iter()
        .filter(|&&p| over_the_line(p, mix))
        .map(|p| p.0)
        .collect();
    if kept.is_empty() {
        points.iter().map(|p| p.0).collect()
    } else {
        kept
    }
}

/// The lambdas [`worth_serving`] keeps of `points`, and their points.
fn kept_points(points: &[(f64, f64, f64)], mix: &MixLine) -> (Vec<f64>, Vec<(f64, f64, f64)>) {
    let kept = worth_serving(points, mix);
    let kept_points = points
        .iter()
        .filter(|p| kept.contains(&p.0))
        .copied()
        .collect();
    (kept, kept_points)
}

/// Each fold's policy beside that fold's validation questions.
fn on_their_folds<'a>(
    policies: &'a [PolicyFile],
    fold_records: &'a [Vec<&'a LabelRecord>],
) -> Vec<(&'a PolicyFile, &'a [&'a LabelRecord])> {
    policies
        .iter()
        .zip(fold_records)
        .map(|(p, r)| (p, r.as_slice()))
        .collect()
}

fn loss_of(loss: LossKind) -> impl Fn(&LabelRecord, usize) -> f64 + Copy {
    move |r: &LabelRecord, j: usize| r.experts[j].loss(loss)
}

/// The cost of the expert most accurate (EM) on `records`: the always-best expert's cost.
pub fn always_best_cost(labels: &Labels, records: &[&LabelRecord]) -> f64 {
    let experts = &labels.header.experts;
    let em = |j: usize| records.iter().map(|r| r.experts[j].em).sum::<f64>();
    (0..experts.len())
        .max_by(|&a, &b| {
            em(a)
                .total_cmp(&em(b))
                .then(experts[b].cost.total_cmp(&experts[a].cost))
        })
        .map_or(0.0, |j| experts[j].cost)
}

/// The most accurate of `points` (lambda, EM, cost) whose cost is at most `target`; the
/// cheapest when none is.
fn pick(points: &[(f64, f64, f64)], target: f64) -> (f64, f64, f64) {
    let fitting = points
        .iter()
        .filter(|p| p.2 <= target + 1e-9)
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)));
    fitting
        .or_else(|| points.iter().min_by(|a, b| a.2.total_cmp(&b.2)))
        .copied()
        .unwrap_or((0.0, 0.0, 0.0))
}

/// Rounds of the search for the lambda at the cost target ([`towards_target`]).
pub const REFINE_ROUNDS: usize = 2;

/// Lambdas to train next in the search for the cost target: two, a third and two thirds of the
/// way (geometrically; arithmetically from 0) between the lambdas on either side of the point
/// where the validation cost crosses `target`, below the entry [`pick`] selects among the kept
/// ones. `points` are (lambda, EM, cost) on validation.
///
/// A bank's cost falls in steps as lambda rises, and a cascade's steps are wide: between two
/// grid lambdas its cost can fall from 69% to 50% and to 32% of the always-best expert's. The
/// entry selected for a target of 50% may then cost a third less than allowed, and candidates
/// would be compared at whatever costs their grids happen to land on. Two rounds narrow the
/// step ninefold (to about 4% in lambda), so each candidate is judged, and served, near the
/// target. Nothing is tried when no kept entry meets the target, or none dearer misses it.
pub fn towards_target(points: &[(f64, f64, f64)], mix: &MixLine, target: f64) -> Vec<f64> {
    let (_, kept_points) = kept_points(points, mix);
    let (picked, _, cost) = pick(&kept_points, target);
    let fits = |p: &(f64, f64, f64)| p.2 <= target + 1e-9;
    if kept_points.is_empty() || cost > target + 1e-9 {
        return Vec::new();
    }
    // The dearest lambda under the pick that misses the target, and the next one up that meets it.
    let Some(lo) = points
        .iter()
        .filter(|p| p.0 < picked && !fits(p))
        .map(|p| p.0)
        .max_by(f64::total_cmp)
    else {
        return Vec::new();
    };
    let hi = points
        .iter()
        .filter(|p| p.0 > lo && fits(p))
        .map(|p| p.0)
        .min_by(f64::total_cmp)
        .unwrap_or(picked);
    let at = |t: f64| {
        let x = if lo > 0.0 {
            lo * (hi / lo).powf(t)
        } else {
            hi * t
        };
        super::three_digits(x)
    };
    let mut out: Vec<f64> = [1.0 / 3.0, 2.0 / 3.0]
        .map(at)
        .into_iter()
        .filter(|&l| l > lo && l < hi && !points.iter().any(|p| p.0 == l))
        .collect();
    out.dedup();
    out
}

/// EM (percent) and mean cost of every bank entry over all the folds' questions: each fold's
/// policy on that fold's validation questions (the policies' banks hold the same lambdas).
fn bank_points(
    labels: &Labels,
    folds: &[(&PolicyFile, &[&LabelRecord])],
) -> anyhow::Result<Vec<(f64, f64, f64)>> {
    let Some((first, _)) = folds.first() else {
        return Ok(Vec::new());
    };
    let mut sums = vec![(0.0, 0.0); first.bank.len()];
    let mut n = 0usize;
    for (policy, records) in folds {
        assert_eq!(policy.bank.len(), sums.len(), "the folds' banks match");
        let probes = probe_indices(labels, &policy.probes)?;
        let entries: Vec<usize> = (0..policy.bank.len()).collect();
        let all = choices_at(policy, &entries, records, labels, &probes);
        for (sum, picks) in sums.iter_mut().zip(all) {
            for (r, (j, c)) in records.iter().zip(picks) {
                sum.0 += r.experts[j].em;
                sum.1 += c;
            }
        }
        n += records.len();
    }
    let n = n.max(1) as f64;
    Ok(first
        .bank
        .iter()
        .zip(sums)
        .map(|(entry, (em, cost))| (entry.lambda, 100.0 * em / n, cost / n))
        .collect())
}

/// The training articles in [`VALIDATION_FOLDS`] folds (fewer with fewer articles), as
/// (inner-training, validation) pairs: every article is validated on exactly once, by a
/// policy trained without it. Deterministic from `seed`; each list sorted.
pub fn validation_folds(articles: &[String], seed: u64) -> Vec<(Vec<String>, Vec<String>)> {
    super::split::folds_by_article(articles, seed, VALIDATION_FOLDS)
}

/// Chooses a candidate and its lambda on validation articles carved out of `articles`.
pub fn select(
    labels: &Labels,
    base: &TrainOptions,
    articles: &[String],
    at_cost: f64,
) -> anyhow::Result<Selection> {
    select_among(labels, base, articles, at_cost, candidates(labels))
}

/// [`select`] among the given candidates.
pub fn select_among(
    labels: &Labels,
    base: &TrainOptions,
    articles: &[String],
    at_cost: f64,
    candidates: Vec<Candidate>,
) -> anyhow::Result<Selection> {
    anyhow::ensure!(!candidates.is_empty(), "no candidate to choose among");
    anyhow::ensure!(
        at_cost.is_finite() && at_cost > 0.0,
        "the cost target must be a positive fraction of the always-best expert's cost, got {at_cost}"
    );
    let folds = validation_folds(articles, base.split_seed);
    anyhow::ensure!(
        folds.len() >= 2,
        "choosing on validation articles needs at least two training articles (one to train on, \
         one to validate), got {}",
        articles.len()
    );
    let fold_records: Vec<Vec<&LabelRecord>> =
        folds.iter().map(|(_, v)| labels.in_articles(v)).collect();
    let records = labels.in_articles(articles);
    let target_cost = at_cost * always_best_cost(labels, &records);
    let mix = MixLine::through(&single_experts(labels, &records));
    // Policies of the same options, one per fold, each trained on that fold's inner articles.
    let train_folds = |options: &TrainOptions| -> anyhow::Result<Vec<PolicyFile>> {
        folds
            .iter()
            .map(|(inner, validation)| train_on(labels, options, inner.clone(), validation.clone()))
            .collect()
    };
    let points_of =
        |policies: &[PolicyFile]| bank_points(labels, &on_their_folds(policies, &fold_records));
    // A candidate at some L2 strengths, each fold's policy on that fold's validation articles.
    let validate =
        |candidate: &Candidate, fit: FitConfig| -> anyhow::Result<(Validated, Vec<PolicyFile>)> {
            let options = TrainOptions {
                fit,
                ..candidate.options(base)
            };
            let mut policies = train_folds(&options)?;
            let mut points = points_of(&policies)?;
            for _ in 0..REFINE_ROUNDS {
                let lambdas = towards_target(&points, &mix, target_cost);
                if lambdas.is_empty() {
                    break;
                }
                let finer = train_folds(&TrainOptions {
                    lambdas,
                    ..options.clone()
                })?;
                points.extend(points_of(&finer)?);
                for (policy, finer) in policies.iter_mut().zip(finer) {
                    assert_eq!(
                        finer.standardize, policy.standardize,
                        "the same training articles standardise the same"
                    );
                    policy.bank.extend(finer.bank);
                    policy.bank.sort_by(|a, b| a.lambda.total_cmp(&b.lambda));
                }
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            let (kept, kept_points) = kept_points(&points, &mix);
            let (lambda, em, mean_cost) = pick(&kept_points, target_cost);
            let validated = Validated {
                candidate: candidate.clone(),
                regularisation: Regularisation::of(&fit),
                all_under_line: !points.iter().any(|&p| over_the_line(p, &mix)),
                points,
                lambda,
                em,
                mean_cost,
                kept,
            };
            Ok((validated, policies))
        };
    // Every candidate at the default strengths; only the leader's policies are kept.
    let mut validated: Vec<Validated> = Vec::new();
    let mut leader: Option<(usize, Vec<PolicyFile>)> = None;
    for candidate in &candidates {
        let (v, policies) = validate(candidate, base.fit)?;
        if leader.as_ref().is_none_or(|(i, _)| v.beats(&validated[*i])) {
            leader = Some((validated.len(), policies));
        }
        validated.push(v);
    }
    let (index, mut best_policies) = leader.expect("there is a candidate");
    let mut best = validated[index].clone();

    // The chosen candidate's L2 strengths, one group at a time.
    let mut tuning = vec![best.clone()];
    let groups: &[fn(Regularisation, f64) -> Regularisation] = &[
        |r, f| Regularisation {
            l2: r.l2 * f,
            l2_hashed: r.l2_hashed * f,
            ..r
        },
        |r, f| Regularisation {
            l2_answers: r.l2_answers * f,
            ..r
        },
    ];
    for (g, scale) in groups.iter().enumerate() {
        if g == 1 && !best.candidate.mode.reads_answers() {
            continue;
        }
        let start = best.regularisation;
        let mut winner = None;
        for factor in L2_FACTORS {
            let (tried, policy) = validate(&best.candidate, scale(start, factor).apply(base.fit))?;
            let leader = winner.as_ref().map_or(&best, |(v, _)| v);
            if tried.beats(leader) {
                winner = Some((tried.clone(), policy));
            }
            tuning.push(tried);
        }
        if let Some((v, policies)) = winner {
            (best, best_policies) = (v, policies);
        }
    }

    // The kept entries' calibration maps, fitted on every fold's validation articles.
    let mut calibrated = best_policies[0].clone();
    calibrate(
        labels,
        &on_their_folds(&best_policies, &fold_records),
        &mut calibrated,
    )?;
    let calibration = calibrated
        .bank
        .into_iter()
        .filter(|e| best.kept.contains(&e.lambda))
        .map(|e| (e.lambda, e.calibration))
        .collect();
    Ok(Selection {
        chosen: best.candidate.clone(),
        lambda: best.lambda,
        regularisation: best.regularisation,
        target_cost,
        validation_articles: articles.len(),
        validation_folds: folds.len(),
        candidates: validated,
        tuning,
        calibration,
    })
}

/// The most accurate of `validated` under the cost target (at equal EM the cheaper; at a tie
/// the first).
fn most_accurate<'a>(validated: impl Iterator<Item = &'a Validated>) -> Option<&'a Validated> {
    validated.reduce(|best, v| if v.beats(best) { v } else { best })
}

/// The recommended policy for a pool: selection among `among` on validation articles carved
/// out of `train_articles`, then the chosen candidate trained on all of them, serving the
/// selected lambda by default.
pub fn train_recommended(
    labels: &Labels,
    base: &TrainOptions,
    train_articles: Vec<String>,
    test_articles: Vec<String>,
    at_cost: f64,
    among: Vec<Candidate>,
) -> anyhow::Result<(PolicyFile, Selection)> {
    let selection = select_among(labels, base, &train_articles, at_cost, among)?;
    let tuned = selection.tuned();
    let mut policy = train_on(labels, &tuned.options(base), train_articles, test_articles)?;
    // The maps fitted on validation articles for the same candidate trained without them.
    assert_eq!(
        policy.bank.len(),
        selection.calibration.len(),
        "a map per kept entry"
    );
    for entry in &mut policy.bank {
        let (_, maps) = selection
            .calibration
            .iter()
            .find(|(lambda, _)| *lambda == entry.lambda)
            .expect("every entry served was kept on validation, and calibrated there");
        entry.calibration = maps.clone();
    }
    Ok((policy, selection))
}

/// [`super::train`] with calibration: the same options trained again without the validation
/// articles carved out of the training ones fit each entry's maps on them. With fewer than two
/// training articles the policy stays uncalibrated (returned with `false`).
pub fn train_calibrated(
    labels: &Labels,
    options: &TrainOptions,
) -> anyhow::Result<(PolicyFile, bool)> {
    let mut policy = super::train(labels, options)?;
    let articles = policy.split.train_articles.clone();
    let (inner, validation) = split_by_article(&articles, options.split_seed, VALIDATION_FRACTION);
    if inner.is_empty() || validation.is_empty() {
        return Ok((policy, false));
    }
    let fewer = train_on(labels, options, inner, validation.clone())?;
    let validation_records = labels.in_articles(&validation);
    calibrate(
        labels,
        &[(&fewer, validation_records.as_slice())],
        &mut policy,
    )?;
    Ok((policy, true))
}

#[derive(Debug, Clone)]
pub struct CvOptions {
    pub folds: usize,
    /// Cost target, as a fraction of the always-best expert's cost.
    pub at_cost: f64,
    /// Seed of the assignment of articles to folds.
    pub seed: u64,
    pub eval: EvalOptions,
}

/// A policy's figures at one lambda on a fold's test articles.
#[derive(Debug, Clone, Serialize)]
pub struct Selected {
    pub mode: Mode,
    /// Which candidate of the mode ([`Candidate::name`]; "agreement table" for the table).
    pub candidate: String,
    pub lambda: f64,
    pub em: f64,
    pub f1: f64,
    pub mean_cost: f64,
    /// `mean_cost / always_best_cost`.
    pub cost_fraction: f64,
    /// EM of the random mix of single experts at `mean_cost`.
    pub mix_em: f64,
    /// `em − mix_em`.
    pub gap: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FoldReport {
    pub fold: usize,
    /// The fold's test articles.
    pub articles: Vec<String>,
    pub test_articles: usize,
    pub test_questions: usize,
    pub selection: Selection,
    /// The chosen candidate, trained on all the fold's training articles, at the lambda chosen
    /// on validation.
    pub selected: Selected,
    /// Cost of the expert most accurate on the fold's training articles.
    pub always_best_cost: f64,
    /// The best candidate on validation of each other mode, trained the same way, at its own
    /// validation-chosen lambda.
    pub others: Vec<Selected>,
    /// The agreement table at the lambda chosen on validation the same way (from a finer grid
    /// than the bank's, see [`table_lambdas`]).
    pub agreement_table: Selected,
    /// The chosen candidate's curve on the test articles, as `l2d eval` writes it.
    pub curve: Vec<CurvePoint>,
    /// The chosen policy's whole report on the test articles (curve, single experts, oracle,
    /// random mix, question-type rule, hand cascade, the agreement table's curve).
    pub report: EvalReport,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub em: f64,
    pub f1: f64,
    pub mean_cost: f64,
    pub cost_fraction: f64,
    pub mix_em: f64,
    pub gap: f64,
    /// The agreement table's gap over the mix line.
    pub table_gap: f64,
    /// The hand cascade's gap over the mix line, where it exists.
    pub cascade_gap: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CvReport {
    pub folds: Vec<FoldReport>,
    pub mean: Summary,
    pub sd: Summary,
    pub at_cost: f64,
    pub bars: Vec<super::eval::Bar>,
}

/// EM of a curve at `cost`, interpolated between its points (ordered by cost); `None` when
/// the curve does not reach that cost.
fn curve_em_at(curve: &[CurvePoint], cost: f64) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = curve.iter().map(|p| (p.row.mean_cost, p.row.em)).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The upper envelope a user gets by serving the best entry at or under each cost, mixed.
    let hull =
        super::eval::MixLine::new(&points.iter().map(|&(c, e)| (c, e, 0.0)).collect::<Vec<_>>());
    let first = points.first()?;
    (cost >= first.0).then(|| hull.at(cost).0)
}

fn bars(folds: &[FoldReport], mean: &Summary) -> Vec<super::eval::Bar> {
    use super::eval::Bar;
    let worst = folds
        .iter()
        .flat_map(|f| f.curve.iter().map(move |p| (f.fold, p)))
        .min_by(|a, b| a.1.gap.total_cmp(&b.1.gap));
    let against_cascade: Vec<String> = folds
        .iter()
        .filter_map(|f| {
            let c = f.report.cascade.as_ref()?;
            let em = curve_em_at(&f.curve, c.mean_cost);
            Some(match em {
                Some(em) => format!("fold {}: {:+.2}", f.fold, em - c.em),
                None => format!("fold {}: curve starts above the cascade's cost", f.fold),
            })
        })
        .collect();
    let cascade_met = folds.iter().all(|f| {
        f.report
            .cascade
            .as_ref()
            .is_none_or(|c| curve_em_at(&f.curve, c.mean_cost).is_some_and(|em| em >= c.em))
    });
    let cheap = mean.cost_fraction <= 0.55;
    let mut bars = vec![
        Bar {
            name: "mean selected gap over the mix line >= +0.8 EM at a mean cost <= 55% of always-best".into(),
            met: cheap && mean.gap >= 0.8,
            detail: format!("{:+.2} EM at {:.1}%", mean.gap, 100.0 * mean.cost_fraction),
        },
        Bar {
            name: "stretch: mean selected gap >= +1.0 EM at a mean cost <= 55%".into(),
            met: cheap && mean.gap >= 1.0,
            detail: format!("{:+.2} EM at {:.1}%", mean.gap, 100.0 * mean.cost_fraction),
        },
    ];
    // A pool without the hand cascade's three experts has no such bar (as in `l2d eval`).
    if !against_cascade.is_empty() {
        bars.push(Bar {
            name: "at the hand cascade's cost, EM >= the cascade's (the curve's upper hull, each fold)".into(),
            met: cascade_met,
            detail: against_cascade.join(", "),
        });
    }
    bars.push(Bar {
        name: "nowhere on the curve more than 0.3 EM below the mix line".into(),
        met: worst.is_none_or(|(_, p)| p.gap >= -0.3),
        detail: worst.map_or(String::new(), |(k, p)| {
            format!(
                "worst: fold {k}, lambda {}: gap {:+.2} at cost {:.2}",
                p.lambda, p.gap, p.row.mean_cost
            )
        }),
    });
    bars
}

fn selected_row(
    candidate: &Candidate,
    lambda: f64,
    row: &Row,
    always_best: f64,
    report: &EvalReport,
) -> Selected {
    let mix_em = mix_at(report, row.mean_cost);
    Selected {
        mode: candidate.mode,
        candidate: candidate.name(),
        lambda,
        em: row.em,
        f1: row.f1,
        mean_cost: row.mean_cost,
        cost_fraction: row.mean_cost / always_best,
        mix_em,
        gap: row.em - mix_em,
    }
}

/// The mix line of the report's single experts at `cost`.
fn mix_at(report: &EvalReport, cost: f64) -> f64 {
    super::eval::mix_row(report, cost).em
}

fn point_at(curve: &[CurvePoint], lambda: f64) -> &CurvePoint {
    curve
        .iter()
        .min_by(|a, b| {
            (a.lambda - lambda)
                .abs()
                .total_cmp(&(b.lambda - lambda).abs())
        })
        .expect("a bank is never empty")
}

/// K-fold cross-validation by article.
pub fn cross_validate(
    labels: &Labels,
    base: &TrainOptions,
    options: &CvOptions,
) -> anyhow::Result<CvReport> {
    anyhow::ensure!(
        options.folds >= 2,
        "--folds must be at least 2, got {}",
        options.folds
    );
    let mut titles: Vec<String> = labels.records.iter().map(|r| r.title.clone()).collect();
    titles.sort();
    titles.dedup();
    anyhow::ensure!(
        titles.len() >= options.folds * 2,
        "{} folds need at least {} articles, the labels have {}",
        options.folds,
        options.folds * 2,
        titles.len()
    );
    let mut folds = Vec::new();
    for (k, (train, test)) in super::split::folds_by_article(&titles, options.seed, options.folds)
        .into_iter()
        .enumerate()
    {
        folds.push(fold(labels, base, options, k, train, test)?);
    }
    let summaries: Vec<Summary> = folds
        .iter()
        .map(|f| Summary {
            em: f.selected.em,
            f1: f.selected.f1,
            mean_cost: f.selected.mean_cost,
            cost_fraction: f.selected.cost_fraction,
            mix_em: f.selected.mix_em,
            gap: f.selected.gap,
            table_gap: f.agreement_table.gap,
            cascade_gap: f
                .report
                .cascade
                .as_ref()
                .map_or(f64::NAN, |c| c.em - mix_at(&f.report, c.mean_cost)),
        })
        .collect();
    let (mean, sd) = mean_sd(&summaries);
    Ok(CvReport {
        bars: bars(&folds, &mean),
        folds,
        mean,
        sd,
        at_cost: options.at_cost,
    })
}

fn fold(
    labels: &Labels,
    base: &TrainOptions,
    options: &CvOptions,
    k: usize,
    train: Vec<String>,
    test: Vec<String>,
) -> anyhow::Result<FoldReport> {
    let selection = select(labels, base, &train, options.at_cost)?;
    let train_records = labels.in_articles(&train);
    let always_best = always_best_cost(labels, &train_records);
    let mut chosen_report = None;
    let mut others = Vec::new();
    for v in &selection.candidates {
        // The defer and cascade candidates the selection did not pick are not retrained: only
        // the best of each mode on validation stands for it (the chosen one, in the chosen
        // mode).
        let best_of_mode = if v.candidate.mode == selection.chosen.mode {
            v.candidate == selection.chosen
        } else {
            most_accurate(
                selection
                    .candidates
                    .iter()
                    .filter(|c| c.candidate.mode == v.candidate.mode),
            )
            .is_some_and(|best| std::ptr::eq(best, v))
        };
        if !best_of_mode {
            continue;
        }
        // The chosen candidate at its tuned L2 strengths; the others at the defaults.
        let v = if v.candidate == selection.chosen {
            selection.tuned()
        } else {
            v
        };
        let policy = train_on(labels, &v.options(base), train.clone(), test.clone())?;
        let report = evaluate(labels, &policy, &options.eval)?;
        let point = point_at(&report.policy.curve, v.lambda);
        let row = selected_row(&v.candidate, point.lambda, &point.row, always_best, &report);
        if v.candidate == selection.chosen {
            chosen_report = Some((row, report));
        } else {
            others.push(row);
        }
    }
    let (selected, report) = chosen_report.expect("the chosen candidate is the best of its mode");

    // The agreement table: its lambda chosen on the same validation folds as the learned
    // candidates (each lambda fitted without a fold, scored on it, over all the folds'
    // questions), then refitted on all of `train`.
    let folds: Vec<(Vec<Answered>, Vec<Answered>)> = validation_folds(&train, base.split_seed)
        .iter()
        .map(|(inner, validation)| {
            (
                answered(&labels.in_articles(inner)),
                answered(&labels.in_articles(validation)),
            )
        })
        .collect();
    let validated = folds.iter().map(|(_, v)| v.len()).sum::<usize>().max(1) as f64;
    let costs: Vec<f64> = labels.header.experts.iter().map(|a| a.cost).collect();
    let stages = labels.header.experts.len().min(3);
    let loss = loss_of(base.loss);
    let table_points: Vec<(f64, f64, f64)> = table_lambdas()
        .into_iter()
        .map(|lambda| {
            let (mut em, mut cost) = (0.0, 0.0);
            for (inner, validation) in &folds {
                let table = AgreementTable::fit(inner, &costs, stages, lambda, loss);
                let (e, c) = table_figures(&table, validation, &costs);
                em += e * validation.len() as f64;
                cost += c * validation.len() as f64;
            }
            (lambda, em / validated, cost / validated)
        })
        .collect();
    let (table_lambda, _, _) = pick(&table_points, selection.target_cost);
    let table = AgreementTable::fit(
        &answered(&train_records),
        &costs,
        stages,
        table_lambda,
        loss,
    );
    let test_records = labels.in_articles(&test);
    let (em, mean_cost) = table_figures(&table, &answered(&test_records), &costs);
    let mix_em = mix_at(&report, mean_cost);
    let agreement_table = Selected {
        mode: Mode::Cascade,
        candidate: "agreement table".into(),
        lambda: table_lambda,
        em,
        f1: f64::NAN,
        mean_cost,
        cost_fraction: mean_cost / always_best,
        mix_em,
        gap: em - mix_em,
    };
    Ok(FoldReport {
        fold: k,
        test_articles: test.len(),
        articles: test.clone(),
        test_questions: test_records.len(),
        selection,
        selected,
        always_best_cost: always_best,
        others,
        agreement_table,
        curve: report.policy.curve.clone(),
        report,
    })
}

/// The lambdas the agreement table is fitted at in `l2d cv`: 0, then 40 steps from 0.005 to 1
/// in geometric progression. A table fits in milliseconds, and its cost jumps between lambdas
/// (it has few states), so it gets a finer grid than the learned bank: the baseline is as
/// strong as validation can make it.
fn table_lambdas() -> Vec<f64> {
    std::iter::once(0.0)
        .chain((0..=40).map(|k| 0.005 * 200f64.powf(f64::from(k) / 40.0)))
        .collect()
}

/// EM (percent) and mean cost of the table on `records`.
fn table_figures(table: &AgreementTable, questions: &[Answered], costs: &[f64]) -> (f64, f64) {
    let n = questions.len().max(1) as f64;
    let (mut em, mut cost) = (0.0, 0.0);
    for q in questions {
        let (j, asked) = table.walk(&q.answers);
        em += q.record.experts[j].em;
        cost += (0..costs.len())
            .filter(|&k| asked >> k & 1 == 1)
            .map(|k| costs[k])
            .sum::<f64>();
    }
    (100.0 * em / n, cost / n)
}

fn mean_sd(rows: &[Summary]) -> (Summary, Summary) {
    let field = |f: fn(&Summary) -> f64| -> (f64, f64) {
        let n = rows.len() as f64;
        let mean = rows.iter().map(f).sum::<f64>() / n;
        let var = rows.iter().map(|r| (f(r) - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean, var.sqrt())
    };
    let pairs = [
        field(|s| s.em),
        field(|s| s.f1),
        field(|s| s.mean_cost),
        field(|s| s.cost_fraction),
        field(|s| s.mix_em),
        field(|s| s.gap),
        field(|s| s.table_gap),
        field(|s| s.cascade_gap),
    ];
    let make = |k: usize| Summary {
        em: if k == 0 { pairs[0].0 } else { pairs[0].1 },
        f1: if k == 0 { pairs[1].0 } else { pairs[1].1 },
        mean_cost: if k == 0 { pairs[2].0 } else { pairs[2].1 },
        cost_fraction: if k == 0 { pairs[3].0 } else { pairs[3].1 },
        mix_em: if k == 0 { pairs[4].0 } else { pairs[4].1 },
        gap: if k == 0 { pairs[5].0 } else { pairs[5].1 },
        table_gap: if k == 0 { pairs[6].0 } else { pairs[6].1 },
        cascade_gap: if k == 0 { pairs[7].0 } else { pairs[7].1 },
    };
    (make(0), make(1))
}

/// The cross-validation as Markdown.
pub fn to_markdown(report: &CvReport) -> String {
    let mut out = format!(
        "Cross-validation by article, {} folds; the mode, its L2 strengths, the lambdas kept and the \
         lambda served chosen on validation articles, for a cost of at most {:.0}% of the \
         always-best expert's.\n\n\
         | fold | chosen | L2 (question, answers) | lambdas kept | lambda | EM | mean cost | % best | mix EM | gap | table gap | others (gap) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        report.folds.len(),
        100.0 * report.at_cost
    );
    for f in &report.folds {
        let tuned = f.selection.tuned();
        let others: Vec<String> = f
            .others
            .iter()
            .map(|o| {
                format!(
                    "{} {:+.2} at {:.0}%",
                    o.candidate,
                    o.gap,
                    100.0 * o.cost_fraction
                )
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {}, {} | {} of {} | {} | {:.2} | {:.2} | {:.1}% | {:.2} | {:+.2} | {:+.2} at {:.0}% | {} |\n",
            f.fold,
            f.selection.chosen.name(),
            tuned.regularisation.l2,
            tuned.regularisation.l2_answers,
            tuned.kept.len(),
            tuned.points.len(),
            f.selected.lambda,
            f.selected.em,
            f.selected.mean_cost,
            100.0 * f.selected.cost_fraction,
            f.selected.mix_em,
            f.selected.gap,
            f.agreement_table.gap,
            100.0 * f.agreement_table.cost_fraction,
            others.join(", ")
        ));
    }
    let (m, s) = (&report.mean, &report.sd);
    // NaN when a fold's pool lacks the hand cascade's experts (then every fold's does).
    let cascade = if m.cascade_gap.is_finite() {
        format!("hand cascade {:+.2} ± {:.2}", m.cascade_gap, s.cascade_gap)
    } else {
        "no hand cascade in this pool".into()
    };
    out.push_str(&format!(
        "\nMean ± sd over folds: EM {:.2} ± {:.2}, cost {:.1}% ± {:.1}% of always-best, gap over the \
         mix line {:+.2} ± {:.2} (agreement table {:+.2} ± {:.2}; {cascade}).\n",
        m.em,
        s.em,
        100.0 * m.cost_fraction,
        100.0 * s.cost_fraction,
        m.gap,
        s.gap,
        m.table_gap,
        s.table_gap,
    ));
    out.push('\n');
    out.push_str(&super::eval::bars_markdown(&report.bars));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_under_the_single_experts_mix_line_are_not_served() {
        // Two experts: 80 EM at cost 20, 90 EM at cost 100; the line is 85 at cost 60.
        let mix = MixLine::new(&[(20.0, 80.0, 0.0), (100.0, 90.0, 0.0)]);
        let points = [
            (0.0, 89.0, 110.0), // dearer than the best expert, less accurate: dropped
            (0.02, 85.5, 60.0), // over the line
            (0.05, 84.9, 60.0), // just under it: dropped
            (0.3, 80.0, 20.0),  // on it (the cheap expert itself)
            (0.5, 79.0, 18.0), // cheaper than any expert, less accurate than the cheap one: dropped
        ];
        assert_eq!(worth_serving(&points, &mix), vec![0.02, 0.3]);
        // A bank under the line everywhere is kept whole: there would be nothing to serve.
        let under = [(0.0, 70.0, 50.0), (0.1, 60.0, 10.0)];
        assert_eq!(worth_serving(&under, &mix), vec![0.0, 0.1]);
    }

    #[test]
    fn the_search_for_the_cost_target_splits_the_step_that_crosses_it() {
        // The line from (10, 80) to (100, 90): every point below is over it.
        let mix = MixLine::new(&[(10.0, 80.0, 0.0), (100.0, 90.0, 0.0)]);
        let target = 50.0;
        let bank = [
            (0.0, 89.9, 100.0),
            (0.0312, 88.0, 69.0),
            (0.0442, 87.0, 50.5), // misses the target by half a point
            (0.0625, 86.0, 32.0), // selected: meets it
            (0.0884, 85.0, 20.0),
        ];
        // A third and two thirds of the way, geometrically, from 0.0442 to 0.0625.
        assert_eq!(towards_target(&bank, &mix, target), vec![0.0496, 0.0557]);
        // From 0 the thirds are arithmetic.
        let from_zero = [(0.0, 89.9, 100.0), (0.0078, 85.0, 20.0)];
        assert_eq!(
            towards_target(&from_zero, &mix, target),
            vec![0.0026, 0.0052]
        );
        // After a round: the step that still crosses is the one split, below the new pick.
        let mut refined = bank.to_vec();
        refined.extend([(0.0496, 86.8, 48.0), (0.0557, 86.4, 40.0)]);
        refined.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(towards_target(&refined, &mix, target), vec![0.0459, 0.0477]);
        // An entry more accurate than its dearer neighbours still splits the crossing under it.
        let bumpy = [
            (0.0312, 88.0, 69.0),
            (0.0442, 86.0, 45.0),
            (0.0625, 86.5, 32.0),
        ];
        assert_eq!(towards_target(&bumpy, &mix, target), vec![0.035, 0.0394]);
        // Nothing to search: every entry meets the target, or none that is kept does.
        let cheap = [(0.0442, 87.0, 40.0), (0.0625, 86.0, 32.0)];
        assert!(towards_target(&cheap, &mix, target).is_empty());
        let dear = [(0.0, 89.9, 100.0), (0.0312, 88.0, 69.0)];
        assert!(towards_target(&dear, &mix, target).is_empty());
        // A step already split down to neighbouring three-digit lambdas yields nothing new.
        let narrow = [(0.0442, 87.0, 50.5), (0.0443, 86.9, 49.0)];
        assert!(towards_target(&narrow, &mix, target).is_empty());
    }

    #[test]
    fn every_training_article_is_validated_on_once_by_a_fold_trained_without_it() {
        let articles: Vec<String> = (0..10).map(|i| format!("article-{i}")).collect();
        let folds = validation_folds(&articles, 7);
        assert_eq!(folds.len(), VALIDATION_FOLDS);
        let mut validated: Vec<&String> = folds.iter().flat_map(|(_, v)| v).collect();
        validated.sort();
        assert_eq!(validated, articles.iter().collect::<Vec<_>>());
        for (inner, validation) in &folds {
            assert!(!validation.is_empty());
            assert_eq!(inner.len() + validation.len(), articles.len());
            assert!(inner.iter().all(|a| !validation.contains(a)));
        }
        // The same seed gives the same folds; another seed, others.
        assert_eq!(validation_folds(&articles, 7), folds);
        assert_ne!(validation_folds(&articles, 8), folds);
        // Fewer articles than folds: one fold per article.
        let two = validation_folds(&articles[..2], 7);
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|(i, v)| i.len() == 1 && v.len() == 1));
    }

    #[test]
    fn a_validated_candidate_trains_with_its_own_strengths_and_kept_lambdas() {
        let base = TrainOptions {
            lambdas: vec![0.0, 0.02, 0.1, 0.5],
            default_lambda: None,
            mode: Mode::Route,
            probes: Vec::new(),
            stages: 0,
            loss: LossKind::Em,
            split_seed: 1,
            test_fraction: 0.5,
            fit: FitConfig::default(),
        };
        let tuned = Regularisation {
            l2: 3.0,
            l2_hashed: 0.5,
            l2_answers: 0.03,
        };
        let v = Validated {
            candidate: Candidate {
                mode: Mode::Defer,
                probes: vec!["a".into(), "b".into()],
                stages: 0,
            },
            regularisation: tuned,
            points: Vec::new(),
            kept: vec![0.02, 0.1],
            all_under_line: false,
            lambda: 0.1,
            em: 0.0,
            mean_cost: 0.0,
        };
        let options = v.options(&base);
        assert_eq!((options.mode, options.probes.len()), (Mode::Defer, 2));
        assert_eq!(options.lambdas, vec![0.02, 0.1]);
        assert_eq!(options.default_lambda, Some(0.1));
        assert_eq!(Regularisation::of(&options.fit), tuned);
        assert_eq!(options.fit.epochs, base.fit.epochs);
    }
}
