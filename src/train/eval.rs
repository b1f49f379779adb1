//! Evaluating a policy file on the test articles of its split, beside honest baselines:
//! every single expert, the oracle, the random mix at the policy's cost, a per-question-word
//! rule, and a hand-written cascade. Reports JSON (exactly the top-level keys `policy`,
//! `experts`, `oracle`, `random_mix`, `question_type_rule`, `cascade`), Markdown and an SVG plot.

use super::labels::{LabelRecord, Labels};
use super::table::{AgreementTable, Answered, answered};
use super::{extra_cost, probe_answers, probe_indices};
use crate::core::features::question_word;
use crate::core::learned::{Mode, PolicyFile, walk_among};
use crate::core::metric::normalize_answer;
use crate::core::rejector::argmax;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Accuracy, F1 (percent), mean cost per query, and the share of queries each expert answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub em: f64,
    pub f1: f64,
    pub mean_cost: f64,
    pub shares: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    pub lambda: f64,
    #[serde(flatten)]
    pub row: Row,
    /// EM of the random mix of single experts at this point's mean cost.
    pub mix_em: f64,
    /// `em − mix_em`.
    pub gap: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    pub name: String,
    pub met: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub mode: Mode,
    pub probes: Vec<String>,
    /// The served bank entry's lambda; its row is the one reported at the top level.
    pub lambda: f64,
    #[serde(flatten)]
    pub row: Row,
    pub test_questions: usize,
    pub test_articles: usize,
    /// Mean cost of always asking the most expensive expert.
    pub always_best_cost: f64,
    pub curve: Vec<CurvePoint>,
    pub bars: Vec<Bar>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub policy: PolicyReport,
    pub experts: BTreeMap<String, Row>,
    pub oracle: Row,
    pub random_mix: Row,
    pub question_type_rule: Row,
    pub cascade: Option<Row>,
    /// The agreement table (see [`super::table`]) fitted on the training articles at each
    /// lambda of the policy's bank, with the same number of stages (empty when the labels hold
    /// none of the training articles).
    pub agreement_table: Vec<CurvePoint>,
    /// How the served entry's calibration holds on the test articles: every action's predicted
    /// expected cost against the cost it had, in ten bins (empty for an uncalibrated policy).
    pub reliability: Vec<super::calibrate::ReliabilityRow>,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// (first, second, fallback): run the first two; if they agree answer the second's, else ask
    /// the fallback. Skipped when any is not an expert of the labels.
    pub cascade: [String; 3],
    /// The price of waiting for each expert's answer, by expert id, in cost units (wait
    /// price × expected service time): the policy's choices are then the scheduler's at zero
    /// load on a pool with those service times. Empty: unpriced.
    pub waiting: BTreeMap<String, f64>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            cascade: ["match-lstm".into(), "rnet-plus".into(), "bert-large".into()],
            waiting: BTreeMap::new(),
        }
    }
}

struct Tally<'a> {
    ids: &'a [String],
    em: f64,
    f1: f64,
    cost: f64,
    counts: Vec<u64>,
    n: u64,
}

impl<'a> Tally<'a> {
    fn new(ids: &'a [String]) -> Self {
        Self {
            ids,
            em: 0.0,
            f1: 0.0,
            cost: 0.0,
            counts: vec![0; ids.len()],
            n: 0,
        }
    }

    /// Expert `j` answered `r`, at `cost`.
    fn add(&mut self, r: &LabelRecord, j: usize, cost: f64) {
        self.em += r.experts[j].em;
        self.f1 += r.experts[j].f1;
        self.cost += cost;
        self.counts[j] += 1;
        self.n += 1;
    }

    fn row(&self) -> Row {
        let n = self.n.max(1) as f64;
        Row {
            em: 100.0 * self.em / n,
            f1: 100.0 * self.f1 / n,
            mean_cost: self.cost / n,
            shares: self
                .ids
                .iter()
                .zip(&self.counts)
                .filter(|(_, c)| **c > 0)
                .map(|(id, c)| (id.clone(), *c as f64 / n))
                .collect(),
        }
    }
}

/// The best EM (and its F1) a random mix of single experts reaches at a mean cost: the upper
/// concave hull of the experts' (cost, EM) points, flat past the best expert. Deterministic: the
/// expected value of the random allocation, not one draw of it.
#[derive(Debug, Clone)]
pub struct MixLine {
    /// Hull vertices: (cost, em, f1, expert index), cost ascending.
    hull: Vec<(f64, f64, f64, usize)>,
}

impl MixLine {
    pub fn new(points: &[(f64, f64, f64)]) -> Self {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by(|&a, &b| {
            points[a]
                .0
                .total_cmp(&points[b].0)
                .then(points[b].1.total_cmp(&points[a].1))
        });
        let mut hull: Vec<(f64, f64, f64, usize)> = Vec::new();
        for i in order {
            let (c, e, f) = points[i];
            if hull.last().is_some_and(|h| e <= h.1) {
                continue; // dominated: costs more, answers no better
            }
            while hull.len() >= 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                // Drop b when it lies on or under the segment a -> (c, e).
                if (b.1 - a.1) * (c - a.0) <= (e - a.1) * (b.0 - a.0) {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push((c, e, f, i));
        }
        Self { hull }
    }

    /// (em, f1, mixture as (expert index, probability)) at mean cost `cost`.
    pub fn at(&self, cost: f64) -> (f64, f64, Vec<(usize, f64)>) {
        let first = self.hull[0];
        let last = *self.hull.last().unwrap_or(&first);
        if cost <= first.0 {
            return (first.1, first.2, vec![(first.3, 1.0)]);
        }
        if cost >= last.0 {
            return (last.1, last.2, vec![(last.3, 1.0)]);
        }
        let k = self.hull.partition_point(|h| h.0 <= cost);
        let (a, b) = (self.hull[k - 1], self.hull[k]);
        let t = (cost - a.0) / (b.0 - a.0);
        (
            a.1 + t * (b.1 - a.1),
            a.2 + t * (b.2 - a.2),
            vec![(a.3, 1.0 - t), (b.3, t)],
        )
    }

    /// The mix line through `rows` (each a single expert's).
    pub fn through(rows: &[Row]) -> Self {
        Self::new(
            &rows
                .iter()
                .map(|r| (r.mean_cost, r.em, r.f1))
                .collect::<Vec<_>>(),
        )
    }

    pub fn vertices(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.hull.iter().map(|h| (h.0, h.1))
    }
}

/// Each single expert answering all of `records`, in the labels' order of experts.
pub fn single_experts(labels: &Labels, records: &[&LabelRecord]) -> Vec<Row> {
    let ids: Vec<String> = labels.header.experts.iter().map(|a| a.id.clone()).collect();
    (0..ids.len())
        .map(|j| {
            let mut t = Tally::new(&ids);
            for r in records {
                t.add(r, j, labels.header.experts[j].cost);
            }
            t.row()
        })
        .collect()
}

/// Evaluates `policy` on the test articles recorded in it.
/// The random mix of single experts (on the hull of `report.experts`) at mean cost `cost`.
pub fn mix_row(report: &EvalReport, cost: f64) -> Row {
    let ids: Vec<&String> = report.experts.keys().collect();
    let points: Vec<(f64, f64, f64)> = report
        .experts
        .values()
        .map(|r| (r.mean_cost, r.em, r.f1))
        .collect();
    let (em, f1, mixture) = MixLine::new(&points).at(cost);
    Row {
        em,
        f1,
        mean_cost: mixture.iter().map(|&(j, p)| p * points[j].0).sum(),
        shares: mixture
            .iter()
            .filter(|(_, p)| *p > 0.0)
            .map(|&(j, p)| (ids[j].clone(), p))
            .collect(),
    }
}

pub fn evaluate(
    labels: &Labels,
    policy: &PolicyFile,
    options: &EvalOptions,
) -> anyhow::Result<EvalReport> {
    let ids: Vec<String> = labels.header.experts.iter().map(|a| a.id.clone()).collect();
    let policy_ids: Vec<&str> = policy.experts.iter().map(|a| a.id.as_str()).collect();
    anyhow::ensure!(
        policy_ids == ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "the policy was trained on experts [{}], the labels hold [{}]",
        policy_ids.join(", "),
        ids.join(", ")
    );
    let probes = probe_indices(labels, &policy.probes)?;
    let test_records = labels.in_articles(&policy.split.test_articles);
    let train_records = labels.in_articles(&policy.split.train_articles);
    anyhow::ensure!(
        !test_records.is_empty(),
        "no labelled question belongs to the policy's test articles"
    );
    let costs: Vec<f64> = labels.header.experts.iter().map(|a| a.cost).collect();
    let max_cost = costs.iter().copied().fold(0.0, f64::max);

    // Single experts, and the mix line through them.
    let singles = single_experts(labels, &test_records);
    let mix = MixLine::through(&singles);
    let experts: BTreeMap<String, Row> = ids.iter().cloned().zip(singles).collect();

    // The policy's curve: every bank entry.
    let entries: Vec<usize> = (0..policy.bank.len()).collect();
    let waiting: Vec<f64> = if options.waiting.is_empty() {
        Vec::new()
    } else {
        ids.iter()
            .map(|id| options.waiting.get(id).copied().unwrap_or(0.0))
            .collect()
    };
    let all = choices_priced(policy, &entries, &test_records, labels, &probes, &waiting);
    let mut curve = Vec::new();
    for (entry, picks) in policy.bank.iter().zip(all) {
        let mut t = Tally::new(&ids);
        for (r, (j, cost)) in test_records.iter().zip(picks) {
            t.add(r, j, cost);
        }
        let row = t.row();
        let mix_em = mix.at(row.mean_cost).0;
        curve.push(CurvePoint {
            lambda: entry.lambda,
            gap: row.em - mix_em,
            mix_em,
            row,
        });
    }
    let served = policy.nearest(policy.default_lambda);
    let lambda = policy.bank[served].lambda;

    // Oracle: per query the cheapest correct expert (the cheapest one when none is right).
    let mut oracle = Tally::new(&ids);
    let mut by_cost: Vec<usize> = (0..ids.len()).collect();
    by_cost.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]));
    for r in &test_records {
        let j = by_cost
            .iter()
            .copied()
            .find(|&j| r.experts[j].em >= 1.0)
            .unwrap_or(by_cost[0]);
        oracle.add(r, j, costs[j]);
    }

    // Random mix at the served policy's cost.
    let served_row = &curve[served].row;
    let (mix_em, mix_f1, mixture) = mix.at(served_row.mean_cost);
    let random_mix = Row {
        em: mix_em,
        f1: mix_f1,
        mean_cost: mixture.iter().map(|&(j, p)| p * costs[j]).sum(),
        shares: mixture
            .iter()
            .filter(|(_, p)| *p > 0.0)
            .map(|&(j, p)| (ids[j].clone(), p))
            .collect(),
    };

    // Per question word: the expert with the best train accuracy − lambda · cost / max cost.
    let mut by_word: HashMap<&str, (Vec<f64>, f64)> = HashMap::new();
    for r in &train_records {
        let entry = by_word
            .entry(question_word(&r.question))
            .or_insert_with(|| (vec![0.0; ids.len()], 0.0));
        for (acc, e) in entry.0.iter_mut().zip(&r.experts) {
            *acc += e.em;
        }
        entry.1 += 1.0;
    }
    let pick = |acc: &[f64], n: f64| {
        let values: Vec<f64> = acc
            .iter()
            .zip(&costs)
            .map(|(a, c)| a / n.max(1.0) - lambda * c / max_cost)
            .collect();
        argmax(&values)
    };
    let mut overall = vec![0.0; ids.len()];
    for (acc, _) in by_word.values() {
        for (o, a) in overall.iter_mut().zip(acc) {
            *o += a;
        }
    }
    let fallback = pick(&overall, train_records.len() as f64);
    let mut rule = Tally::new(&ids);
    for r in &test_records {
        let j = by_word
            .get(question_word(&r.question))
            .map_or(fallback, |(acc, n)| pick(acc, *n));
        rule.add(r, j, costs[j]);
    }

    // The cascade.
    let position = |id: &str| ids.iter().position(|x| x == id);
    let cascade = match (
        position(&options.cascade[0]),
        position(&options.cascade[1]),
        position(&options.cascade[2]),
    ) {
        (Some(a), Some(b), Some(c)) => {
            let mut t = Tally::new(&ids);
            for r in &test_records {
                let agree = match (&r.experts[a].answer, &r.experts[b].answer) {
                    (Some(x), Some(y)) => normalize_answer(x) == normalize_answer(y),
                    _ => false,
                };
                if agree {
                    t.add(r, b, costs[a] + costs[b]);
                } else {
                    t.add(r, c, costs[a] + costs[b] + costs[c]);
                }
            }
            Some(t.row())
        }
        _ => None,
    };

    // The agreement table, at every lambda of the bank.
    let stages = if policy.stages > 0 {
        policy.stages
    } else {
        ids.len().min(3)
    };
    let loss_of = |r: &LabelRecord, j: usize| r.experts[j].loss(policy.loss);
    let (train_answered, test_answered) = (answered(&train_records), answered(&test_records));
    // (Not when the labels hold no training question, as in `l2d demo`.)
    let fitted_on = if train_records.is_empty() {
        &[][..]
    } else {
        &policy.bank[..]
    };
    let agreement_table = fitted_on
        .iter()
        .map(|entry| {
            let table = AgreementTable::fit(&train_answered, &costs, stages, entry.lambda, loss_of);
            let mut t = Tally::new(&ids);
            for Answered { record: r, answers } in &test_answered {
                let (j, asked) = table.walk(answers);
                let cost = (0..ids.len())
                    .filter(|&k| asked >> k & 1 == 1)
                    .map(|k| costs[k])
                    .sum();
                t.add(r, j, cost);
            }
            let row = t.row();
            let mix_em = mix.at(row.mean_cost).0;
            CurvePoint {
                lambda: entry.lambda,
                gap: row.em - mix_em,
                mix_em,
                row,
            }
        })
        .collect();

    let bars = quality_bars(&curve, served, max_cost, cascade.as_ref());
    let reliability = super::calibrate::reliability(labels, policy, served, &test_records)?;
    Ok(EvalReport {
        policy: PolicyReport {
            mode: policy.mode,
            probes: policy.probes.clone(),
            lambda,
            row: served_row.clone(),
            test_questions: test_records.len(),
            test_articles: policy.split.test_articles.len(),
            always_best_cost: max_cost,
            curve,
            bars,
        },
        experts,
        oracle: oracle.row(),
        random_mix,
        question_type_rule: rule.row(),
        cascade,
        agreement_table,
        reliability,
    })
}

/// What the policy does on each of `records` at bank entry `entry`: the agent whose answer it
/// gives and the cost it pays (its probes or stages included).
pub fn choices(
    policy: &PolicyFile,
    entry: usize,
    records: &[&LabelRecord],
    labels: &Labels,
    probes: &[usize],
) -> Vec<(usize, f64)> {
    choices_at(policy, &[entry], records, labels, probes)
        .pop()
        .unwrap_or_default()
}

/// [`choices`] at each of `entries`, each record featurized once for all of them.
pub fn choices_at(
    policy: &PolicyFile,
    entries: &[usize],
    records: &[&LabelRecord],
    labels: &Labels,
    probes: &[usize],
) -> Vec<Vec<(usize, f64)>> {
    choices_priced(policy, entries, records, labels, probes, &[])
}

/// [`choices_at`] as the scheduler makes them when waiting is priced: `waiting[j]` is the
/// price of waiting for agent `j`'s answer (wait price × its expected service time), added to
/// the score of every action that calls it (answers already seen are free). Empty: no price,
/// the rejector's own choices.
pub fn choices_priced(
    policy: &PolicyFile,
    entries: &[usize],
    records: &[&LabelRecord],
    labels: &Labels,
    probes: &[usize],
    waiting: &[f64],
) -> Vec<Vec<(usize, f64)>> {
    let costs: Vec<f64> = labels.header.experts.iter().map(|a| a.cost).collect();
    let mut out = vec![Vec::with_capacity(records.len()); entries.len()];
    let mut logits = Vec::new();
    let priced = waiting.iter().any(|w| *w > 0.0);
    // The best action: lowest score plus the waiting of a call it makes.
    let best = |scores: &[f64], free: &dyn Fn(usize) -> bool| {
        (0..scores.len())
            .map(|j| (j, scores[j] + if free(j) { 0.0 } else { waiting[j] }))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(costs[a.0].total_cmp(&costs[b.0])))
            .map_or(0, |(j, _)| j)
    };
    // What a walk that asked the agents flagged in `asked` paid.
    let paid = |asked: &[bool]| -> f64 {
        (0..costs.len())
            .filter(|&k| asked[k])
            .map(|k| costs[k])
            .sum()
    };
    // A cascade never asks an expert that has no answer to the question: the scheduler does
    // not call a replay expert that holds no recording of it. (An expert whose call failed
    // while labelling has no answer either, and is treated the same.)
    let able =
        |r: &LabelRecord| -> Vec<bool> { r.experts.iter().map(|e| e.answer.is_some()).collect() };
    if policy.mode == Mode::Cascade && priced {
        for r in records {
            let full = super::cascade::full_features(r);
            let able = able(r);
            for (&e, choices) in entries.iter().zip(&mut out) {
                let mut asked = vec![false; costs.len()];
                let kept = loop {
                    let (stage, valid) = policy.state_logits(e, &full, &asked, &mut logits);
                    policy.expected_costs(e, stage, &mut logits, &valid);
                    for (j, score) in logits.iter_mut().enumerate() {
                        if !asked[j] && !able[j] {
                            *score = f64::INFINITY;
                        }
                    }
                    let j = best(&logits, &|j| asked[j]);
                    if asked[j] {
                        break j;
                    }
                    asked[j] = true;
                };
                choices.push((kept, paid(&asked)));
            }
        }
        return out;
    }
    if policy.mode == Mode::Cascade {
        let stages: Vec<Vec<_>> = entries.iter().map(|&e| policy.stage_rejectors(e)).collect();
        let mut scratch = (Vec::new(), Vec::new());
        for r in records {
            let full = super::cascade::full_features(r);
            let able = able(r);
            for (stages, choices) in stages.iter().zip(&mut out) {
                let mut asked = vec![false; costs.len()];
                let j = walk_among(
                    stages,
                    &policy.standardize,
                    &full,
                    &mut asked,
                    &able,
                    &mut scratch,
                );
                choices.push((j, paid(&asked)));
            }
        }
        return out;
    }
    let probe_cost: f64 = probes.iter().map(|&p| costs[p]).sum();
    for r in records {
        let f = policy.features(&r.question, &r.context, None, &probe_answers(r, probes));
        for (&e, choices) in entries.iter().zip(&mut out) {
            policy.logits(e, &f, &mut logits);
            let j = if priced {
                policy.expected_costs(e, 0, &mut logits, &vec![true; costs.len()]);
                best(&logits, &|j| probes.contains(&j))
            } else {
                argmax(&logits)
            };
            choices.push((j, probe_cost + extra_cost(labels, probes, j)));
        }
    }
    out
}

/// The bars on one test split. The ones about half cost judge the *served* entry (its lambda
/// chosen before the test articles were seen), not the best point of the test curve, which
/// would be a choice made on the test articles.
fn quality_bars(
    curve: &[CurvePoint],
    served: usize,
    max_cost: f64,
    cascade: Option<&Row>,
) -> Vec<Bar> {
    let worst = curve.iter().min_by(|a, b| a.gap.total_cmp(&b.gap));
    let half = 0.5 * max_cost;
    let served_cheap = curve.get(served).filter(|p| p.row.mean_cost <= half);
    let describe = |p: Option<&CurvePoint>| {
        p.map_or("no point".to_string(), |p| {
            format!(
                "lambda {}: {:.2} EM at cost {:.2} vs mix {:.2} (gap {:+.2})",
                p.lambda, p.row.em, p.row.mean_cost, p.mix_em, p.gap
            )
        })
    };
    let mut bars = vec![
        Bar {
            name: "never more than 0.3 EM below the mix line".into(),
            met: worst.is_some_and(|p| p.gap >= -0.3),
            detail: format!("worst: {}", describe(worst)),
        },
        Bar {
            name: "served lambda: at most 50% of always-best cost, at least 0.3 EM above the mix line".into(),
            met: served_cheap.is_some_and(|p| p.gap >= 0.3),
            detail: format!("served: {}", describe(curve.get(served))),
        },
        Bar {
            name: "stretch: served lambda at most 50% of always-best cost, at least 1.0 EM above the mix line"
                .into(),
            met: served_cheap.is_some_and(|p| p.gap >= 1.0),
            detail: format!("served: {}", describe(curve.get(served))),
        },
    ];
    if let Some(c) = cascade {
        let beats = curve
            .iter()
            .find(|p| p.row.em >= c.em && p.row.mean_cost <= c.mean_cost);
        bars.push(Bar {
            name: "as accurate as the cascade at no more cost".into(),
            met: beats.is_some(),
            detail: format!(
                "cascade {:.2} EM at cost {:.2}; {}",
                c.em,
                c.mean_cost,
                beats.map_or("no point of the curve matches it".to_string(), |p| format!(
                    "matched by {}",
                    describe(Some(p))
                ))
            ),
        });
    }
    bars
}

/// The report as Markdown tables.
pub fn to_markdown(report: &EvalReport) -> String {
    let p = &report.policy;
    let mut out = format!(
        "Test articles: {} ({} questions). Policy: {:?} mode{}, lambda {}.\n\n",
        p.test_articles,
        p.test_questions,
        p.mode,
        if p.probes.is_empty() {
            String::new()
        } else {
            format!(" (probes: {})", p.probes.join(", "))
        },
        p.lambda
    );
    let best = p.always_best_cost.max(f64::MIN_POSITIVE);
    out.push_str("| allocation | EM | F1 | mean cost | % of always-best cost |\n| --- | --- | --- | --- | --- |\n");
    let mut line = |name: &str, r: &Row| {
        out.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1}% |\n",
            r.em,
            r.f1,
            r.mean_cost,
            100.0 * r.mean_cost / best
        ));
    };
    line("**policy**", &p.row);
    line("random mix at the policy's cost", &report.random_mix);
    line("question-type rule", &report.question_type_rule);
    if let Some(c) = &report.cascade {
        line("cascade", c);
    }
    line("oracle", &report.oracle);
    let mut experts: Vec<(&String, &Row)> = report.experts.iter().collect();
    experts.sort_by(|a, b| a.1.mean_cost.total_cmp(&b.1.mean_cost));
    for (id, r) in experts {
        line(&format!("always {id}"), r);
    }
    out.push_str("\nThe lambda sweep (test articles):\n\n| lambda | EM | F1 | mean cost | mix EM | gap | shares |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for c in &p.curve {
        let shares: Vec<String> = c
            .row
            .shares
            .iter()
            .map(|(k, v)| format!("{k} {:.0}%", 100.0 * v))
            .collect();
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:+.2} | {} |\n",
            c.lambda,
            c.row.em,
            c.row.f1,
            c.row.mean_cost,
            c.mix_em,
            c.gap,
            shares.join(", ")
        ));
    }
    out.push_str("\nThe agreement table (no query features; same lambdas, same test articles):\n\n| lambda | EM | F1 | mean cost | mix EM | gap |\n| --- | --- | --- | --- | --- | --- |\n");
    for c in &report.agreement_table {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:+.2} |\n",
            c.lambda, c.row.em, c.row.f1, c.row.mean_cost, c.mix_em, c.gap
        ));
    }
    if !report.reliability.is_empty() {
        out.push_str(&format!(
            "\nCalibration at lambda {} (test articles): every action the policy could take on \
             each question, binned by the expected deferral cost it predicted, against the cost \
             the action had (loss + lambda × price / max price):\n\n\
             | predicted | actions | mean predicted | mean realised |\n| --- | --- | --- | --- |\n",
            p.lambda
        ));
        for r in &report.reliability {
            out.push_str(&format!(
                "| {:.3}–{:.3} | {} | {:.3} | {:.3} |\n",
                r.from, r.to, r.actions, r.mean_predicted, r.mean_realised
            ));
        }
    }
    out.push('\n');
    out.push_str(&bars_markdown(&p.bars));
    out
}

/// Bars as a Markdown table.
pub fn bars_markdown(bars: &[Bar]) -> String {
    let mut out = String::from("| bar | met | detail |\n| --- | --- | --- |\n");
    for b in bars {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            b.name,
            if b.met { "yes" } else { "**no**" },
            b.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_line_is_the_upper_hull_of_the_experts() {
        // (cost, em, f1): a cheap expert, a dominated one, a mid one under the hull, a strong one.
        let line = MixLine::new(&[
            (1.0, 40.0, 50.0),
            (5.0, 30.0, 40.0),
            (50.0, 60.0, 70.0),
            (100.0, 90.0, 95.0),
        ]);
        let vertices: Vec<(f64, f64)> = line.vertices().collect();
        // (50, 60) lies under the segment (1, 40) -> (100, 90) (which gives 65.25 at cost 50).
        assert_eq!(vertices, [(1.0, 40.0), (100.0, 90.0)]);
        let (em, f1, mixture) = line.at(50.5);
        assert!((em - 65.0).abs() < 1e-9 && (f1 - 72.5).abs() < 1e-9);
        assert_eq!(mixture, vec![(0, 0.5), (3, 0.5)]);
        assert_eq!(line.at(0.5).0, 40.0);
        assert_eq!(line.at(500.0).0, 90.0);
    }
}
