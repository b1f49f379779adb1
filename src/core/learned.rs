//! The learned policy: a policy file (a bank of rejectors trained at several prices of compute)
//! and the [`Policy`] that serves one of them.
//!
//! File format (JSON, `format = "l2d-policy/1"`): the featurizer version, the mode (`route`:
//! decided from the query alone; `defer`: the probe experts run first and their answers are
//! features; `cascade`: after each answer, a stage rejector chooses between keeping an answer
//! seen and asking another expert, up to `stages` experts), the agents (expert ids and declared costs) in rejector order, the loss, the
//! train/test split by article, the training settings, the dense-feature standardisation, and
//! the bank `[{lambda, rejector}]`. A file written by another featurizer version is refused.
//!
//! Serving: featurize, standardise, `r(x)`, softmax; each pool expert the policy knows gets as
//! its score the expected deferral cost `E[c_j | x]` its probability maps to under the entry's
//! [`Calibration`] (fitted on validation questions; lower is better, in the units the scheduler
//! also prices waiting in). A file without calibration scores `1 − softmax_j`, which orders the
//! experts the same way but is in no unit. Experts the policy does not know get no score and
//! are tried after the known ones. In cascade
//! mode the request asks the policy again after each answer; at the last stage only the experts
//! asked are scored.

use super::calibration::Calibration;
use super::features::{
    FEATURIZER_VERSION, Features, HASH_BUCKETS, cascade_dense, cascade_dense_len, dense_len,
    featurize_analysed, featurize_dense,
};
use super::policy::{ExpertMeta, Observed, Policy, PolicyIdentity};
use super::query::Query;
use super::reading::ContextAnalysis;
use super::rejector::{LinearRejector, softmax};
use serde::{Deserialize, Serialize};

pub const POLICY_FORMAT: &str = "l2d-policy/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Route,
    Defer,
    Cascade,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Route => "route",
            Mode::Defer => "defer",
            Mode::Cascade => "cascade",
        }
    }

    /// Whether the policy reads experts' answers before it decides (defer's probes, the
    /// cascade's stages), and so has answer features.
    pub fn reads_answers(self) -> bool {
        self != Mode::Route
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    Em,
    F1,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    pub seed: u64,
    pub test_fraction: f64,
    pub train_articles: Vec<String>,
    pub test_articles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub seed: u64,
    pub epochs: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub l2_hashed: f64,
    pub l2_probe: f64,
    pub batch_size: usize,
    pub examples: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardization {
    pub fn apply(&self, dense: &mut [f64]) {
        for ((x, m), s) in dense.iter_mut().zip(&self.mean).zip(&self.std) {
            *x = (*x - m) / s;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankEntry {
    pub lambda: f64,
    /// Route and defer mode: the rejector. Cascade mode: the first stage's (nothing asked yet).
    pub rejector: LinearRejector,
    /// Cascade mode: the rejectors of stages 1 ..= `stages` (that many experts asked). No
    /// cascade rejector reads the hashed question n-grams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<LinearRejector>,
    /// The maps from the rejector's probabilities to expected deferral costs, by stage (one in
    /// route and defer mode, `stages + 1` in cascade mode); empty when uncalibrated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<Calibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFile {
    pub format: String,
    pub featurizer: String,
    pub mode: Mode,
    /// Defer mode: experts that always run first, in feature order.
    #[serde(default)]
    pub probes: Vec<String>,
    /// The rejector's agents, in output order.
    pub experts: Vec<Agent>,
    /// Cascade mode: the most experts asked before an answer is kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stages: usize,
    pub loss: LossKind,
    pub split: SplitRecord,
    pub training: TrainingRecord,
    pub standardize: Standardization,
    /// The bank entry served unless another lambda is asked for.
    pub default_lambda: f64,
    pub bank: Vec<BankEntry>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyFileError {
    #[error("not a policy file: {0}")]
    Parse(String),
    #[error("policy file format {found:?} is not {POLICY_FORMAT:?}")]
    Format { found: String },
    #[error(
        "policy was trained with featurizer {found:?}, this build has {FEATURIZER_VERSION:?}: \
         retrain it (l2d train)"
    )]
    Featurizer { found: String },
    #[error("policy file is inconsistent: {0}")]
    Inconsistent(String),
}

impl PolicyFile {
    pub fn parse(text: &str) -> Result<Self, PolicyFileError> {
        // Check the identity fields first, so an old file gets the precise reason.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PolicyFileError::Parse(e.to_string()))?;
        let format = value
            .get("format")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if format != POLICY_FORMAT {
            return Err(PolicyFileError::Format {
                found: format.to_owned(),
            });
        }
        let featurizer = value
            .get("featurizer")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if featurizer != FEATURIZER_VERSION {
            return Err(PolicyFileError::Featurizer {
                found: featurizer.to_owned(),
            });
        }
        let file: PolicyFile =
            serde_json::from_value(value).map_err(|e| PolicyFileError::Parse(e.to_string()))?;
        file.check()?;
        Ok(file)
    }

    pub fn check(&self) -> Result<(), PolicyFileError> {
        let bad = |m: String| Err(PolicyFileError::Inconsistent(m));
        if self.experts.is_empty() {
            return bad("no experts".into());
        }
        if self.bank.is_empty() {
            return bad("the bank holds no rejector".into());
        }
        if let Some(a) = self
            .experts
            .iter()
            .find(|a| !(a.cost.is_finite() && a.cost > 0.0))
        {
            return bad(format!("expert {:?} has cost {}", a.id, a.cost));
        }
        if let Some(a) = self
            .experts
            .iter()
            .enumerate()
            .find(|&(k, a)| self.experts[..k].iter().any(|b| b.id == a.id))
            .map(|(_, a)| a)
        {
            // Scores are matched to the pool by id: a second entry would be scored and never
            // served, or served with the first one's weights.
            return bad(format!("expert {:?} is named twice", a.id));
        }
        if let Some(p) = self
            .probes
            .iter()
            .find(|p| !self.experts.iter().any(|a| &a.id == *p))
        {
            return bad(format!("probe {p:?} is not one of the experts"));
        }
        if (self.mode == Mode::Defer) == self.probes.is_empty() {
            return bad("defer mode needs probes, route and cascade mode have none".into());
        }
        let cascade = self.mode == Mode::Cascade;
        if cascade != (self.stages > 0) || self.stages > self.experts.len() {
            return bad(format!(
                "cascade mode needs 1 to {} stages, other modes none; found {}",
                self.experts.len(),
                self.stages
            ));
        }
        let d = if cascade {
            cascade_dense_len(self.experts.len())
        } else {
            dense_len(self.probes.len())
        };
        if self.standardize.mean.len() != d
            || self.standardize.std.len() != d
            || self
                .standardize
                .std
                .iter()
                .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return bad(format!(
                "standardisation must hold {d} finite means and positive deviations"
            ));
        }
        for entry in &self.bank {
            let r = &entry.rejector;
            if !(entry.lambda.is_finite() && entry.lambda >= 0.0) {
                return bad(format!("lambda {} in the bank", entry.lambda));
            }
            if r.agents != self.experts.len()
                || r.dense_len != d
                || r.hash_buckets != if cascade { 0 } else { HASH_BUCKETS }
                || !r.is_well_formed()
            {
                return bad(format!(
                    "the rejector at lambda {} has the wrong shape or non-finite weights",
                    entry.lambda
                ));
            }
            let later_fits = |r: &LinearRejector| {
                r.agents == self.experts.len()
                    && r.dense_len == d
                    && r.hash_buckets == 0
                    && r.is_well_formed()
            };
            if entry.later.len() != self.stages || !entry.later.iter().all(later_fits) {
                return bad(format!(
                    "the bank entry at lambda {} needs {} later-stage rejectors of the right shape",
                    entry.lambda, self.stages
                ));
            }
            if !entry.calibration.is_empty() && entry.calibration.len() != self.stages + 1 {
                return bad(format!(
                    "the bank entry at lambda {} needs {} calibration maps or none, found {}",
                    entry.lambda,
                    self.stages + 1,
                    entry.calibration.len()
                ));
            }
            if let Some(e) = entry.calibration.iter().find_map(|c| c.check().err()) {
                return bad(format!("the bank entry at lambda {}: {e}", entry.lambda));
            }
        }
        Ok(())
    }

    /// Index of the bank entry whose lambda is nearest `lambda`.
    pub fn nearest(&self, lambda: f64) -> usize {
        let mut best = 0;
        for (i, e) in self.bank.iter().enumerate() {
            if (e.lambda - lambda).abs() < (self.bank[best].lambda - lambda).abs() {
                best = i;
            }
        }
        best
    }

    /// Standardised dense and hashed features of a query: the one way serving, `l2d eval` and
    /// off-policy evaluation turn a query (and its probes' answers) into the rejector's input.
    /// `analysis`, when given, is of `context` and saves tokenizing it again.
    pub fn features(
        &self,
        question: &str,
        context: &str,
        analysis: Option<&ContextAnalysis>,
        probes: &[Option<&str>],
    ) -> Features {
        let mut f = featurize_analysed(question, context, analysis, probes);
        self.standardize.apply(&mut f.dense);
        f
    }

    /// Cascade mode: the features of a query in the state where the agents flagged in `asked`
    /// were asked; `answers` holds one entry per agent (`None` for no answer; ignored for an
    /// agent not asked). `analysis`, when given, is of `context`.
    pub fn state_features(
        &self,
        question: &str,
        context: &str,
        analysis: Option<&ContextAnalysis>,
        answers: &[Option<&str>],
        asked: &[bool],
    ) -> Features {
        // A stage rejector reads the dense features only.
        let full = featurize_dense(question, context, analysis, answers);
        self.mask_state(&full, asked)
    }

    /// Cascade mode: standardised state features from the unstandardised featurization of a
    /// query with every agent's answer (see [`cascade_dense`]).
    pub fn mask_state(&self, full: &Features, asked: &[bool]) -> Features {
        let mut dense = Vec::with_capacity(cascade_dense_len(asked.len()));
        cascade_dense(&full.dense, asked, &mut dense);
        self.standardize.apply(&mut dense);
        Features {
            dense,
            hashed: Vec::new(),
        }
    }

    /// Cascade mode: the rejectors of bank entry `entry`, by stage.
    pub fn stage_rejectors(&self, entry: usize) -> Vec<&LinearRejector> {
        let e = &self.bank[entry];
        std::iter::once(&e.rejector).chain(&e.later).collect()
    }

    /// Cascade mode: the logits of stage `stage` (that many agents asked) at bank entry `entry`.
    pub fn stage_logits(
        &self,
        entry: usize,
        stage: usize,
        features: &Features,
        out: &mut Vec<f64>,
    ) {
        let e = &self.bank[entry];
        let rejector = match stage {
            0 => &e.rejector,
            s => &e.later[s - 1],
        };
        rejector.logits(&features.dense, &[], out);
    }

    /// The rejector's logits at bank entry `entry` for a query's [`PolicyFile::features`].
    pub fn logits(&self, entry: usize, features: &Features, out: &mut Vec<f64>) {
        self.bank[entry]
            .rejector
            .logits(&features.dense, &features.hashed, out);
    }

    /// Cascade mode: the logits of bank entry `entry` in the state where the agents flagged in
    /// `asked` were asked (`full` as for [`PolicyFile::mask_state`]). Returns the stage and
    /// which actions it has: every agent, except at the last stage, where only the answers
    /// seen can be kept.
    pub fn state_logits(
        &self,
        entry: usize,
        full: &Features,
        asked: &[bool],
        out: &mut Vec<f64>,
    ) -> (usize, Vec<bool>) {
        let stage = asked.iter().filter(|a| **a).count().min(self.stages);
        self.stage_logits(entry, stage, &self.mask_state(full, asked), out);
        let valid = if stage == self.stages {
            asked.to_vec()
        } else {
            vec![true; asked.len()]
        };
        (stage, valid)
    }

    /// The softmax of `logits` over the actions in `valid`, in place (0 for the others).
    pub fn action_probabilities(logits: &mut [f64], valid: &[bool]) {
        for (r, v) in logits.iter_mut().zip(valid) {
            if !v {
                *r = f64::NEG_INFINITY;
            }
        }
        softmax(logits);
    }

    /// Turns the logits of bank entry `entry` at `stage` (0 outside cascade mode) into each
    /// action's score, in place: [`PolicyFile::action_probabilities`], mapped by the stage's
    /// [`Calibration`] to an expected deferral cost (`1 − softmax` without one); infinite for
    /// an action not in `valid`. The scores serving ranks, and offline evaluation with priced
    /// waiting.
    pub fn expected_costs(&self, entry: usize, stage: usize, logits: &mut [f64], valid: &[bool]) {
        Self::action_probabilities(logits, valid);
        let calibration = self.bank[entry].calibration.get(stage);
        for (q, v) in logits.iter_mut().zip(valid) {
            *q = match (v, calibration) {
                (false, _) => f64::INFINITY,
                (true, Some(c)) => c.expected_cost(*q),
                (true, None) => 1.0 - *q,
            };
        }
    }

    /// Softmax of the rejector at bank entry `entry` for a query.
    pub fn probabilities(
        &self,
        entry: usize,
        question: &str,
        context: &str,
        probes: &[Option<&str>],
        out: &mut Vec<f64>,
    ) {
        let features = self.features(question, context, None, probes);
        self.logits(entry, &features, out);
        softmax(out);
    }
}

/// Cascade mode: from the state `asked` of a query whose featurization with every agent's
/// answer is `full` (unstandardised; its hashed n-grams are not read), follows the stage rejectors `stages` (indexed by how many
/// agents were asked; the last one only keeps an answer) until one keeps an answer. Returns the
/// agent kept; `asked` gains the agents asked on the way. The one walk training's backward
/// induction and `l2d eval` make; serving makes the same choices one call at a time.
pub fn walk(
    stages: &[&LinearRejector],
    standardize: &Standardization,
    full: &Features,
    asked: &mut [bool],
    scratch: &mut (Vec<f64>, Vec<f64>),
) -> usize {
    walk_among(stages, standardize, full, asked, &[], scratch)
}

/// [`walk`] where only the agents flagged in `able` can be asked (empty: all of them), as the
/// scheduler never asks an expert that cannot take the query (a replay expert holding no
/// recording of it).
pub fn walk_among(
    stages: &[&LinearRejector],
    standardize: &Standardization,
    full: &Features,
    asked: &mut [bool],
    able: &[bool],
    scratch: &mut (Vec<f64>, Vec<f64>),
) -> usize {
    let last = stages.len() - 1;
    loop {
        let stage = asked.iter().filter(|a| **a).count().min(last);
        let (dense, logits) = &mut *scratch;
        cascade_dense(&full.dense, asked, dense);
        standardize.apply(dense);
        stages[stage].logits(dense, &[], logits);
        let action = best_action(logits, asked, able, stage == last);
        if asked[action] {
            return action;
        }
        asked[action] = true;
    }
}

/// Cascade mode: the agent of highest logit among the actions of a state (keep an answer of an
/// agent asked; ask another one that is `able` (empty: any), except at the last stage). Ties go
/// to the first.
pub fn best_action(logits: &[f64], asked: &[bool], able: &[bool], last_stage: bool) -> usize {
    let mut best: Option<usize> = None;
    for (j, &r) in logits.iter().enumerate() {
        let action = asked[j] || (!last_stage && able.get(j).copied().unwrap_or(true));
        if action && best.is_none_or(|b| r > logits[b]) {
            best = Some(j);
        }
    }
    best.unwrap_or(0)
}

/// A policy file, its bank ordered by price of compute: the caller chooses the entry served
/// (the scheduler, to follow a live cost target).
#[derive(Debug)]
pub struct LearnedPolicy {
    file: PolicyFile,
    /// Bank indexes sorted by ascending lambda.
    by_lambda: Vec<usize>,
    /// The lambdas in that order.
    lambdas: Vec<f64>,
    /// The position of the entry asked for at load.
    default_position: usize,
    identity: PolicyIdentity,
}

impl LearnedPolicy {
    /// Serves the bank entry nearest `lambda` (the file's default when `None`) by default.
    /// `digest` names the file's content in the policy id.
    pub fn new(file: PolicyFile, lambda: Option<f64>, digest: &str) -> Self {
        let entry = file.nearest(lambda.unwrap_or(file.default_lambda));
        let mut by_lambda: Vec<usize> = (0..file.bank.len()).collect();
        by_lambda.sort_by(|&a, &b| file.bank[a].lambda.total_cmp(&file.bank[b].lambda));
        let default_position = by_lambda.iter().position(|&i| i == entry).unwrap_or(0);
        let mode = file.mode.as_str();
        let lambdas: Vec<f64> = by_lambda.iter().map(|&i| file.bank[i].lambda).collect();
        let listed: Vec<String> = lambdas.iter().map(f64::to_string).collect();
        let probes = if file.mode == Mode::Cascade {
            format!("chosen after each answer, up to {} experts", file.stages)
        } else if file.probes.is_empty() {
            "none".to_string()
        } else {
            file.probes.join(", ")
        };
        let identity = PolicyIdentity {
            id: format!("learned-{mode}:{digest}"),
            kind: format!("learned-{mode}"),
            description: format!(
                "linear rejector ({}) over {} experts; bank lambdas [{}]; probes: {probes}",
                file.featurizer,
                file.experts.len(),
                listed.join(", "),
            ),
        };
        Self {
            file,
            by_lambda,
            lambdas,
            default_position,
            identity,
        }
    }

    pub fn file(&self) -> &PolicyFile {
        &self.file
    }

    fn entry(&self, position: usize) -> usize {
        self.by_lambda[position.min(self.by_lambda.len() - 1)]
    }
}

impl Policy for LearnedPolicy {
    fn identity(&self) -> &PolicyIdentity {
        &self.identity
    }

    fn lambdas(&self) -> &[f64] {
        &self.lambdas
    }

    fn default_position(&self) -> usize {
        self.default_position
    }

    fn reads_context(&self) -> bool {
        true
    }

    fn probes(&self) -> &[String] {
        &self.file.probes
    }

    fn stages(&self) -> usize {
        self.file.stages
    }

    fn score(
        &self,
        position: usize,
        query: &Query,
        observed: &[Observed<'_>],
        experts: &[ExpertMeta<'_>],
        out: &mut Vec<Option<f64>>,
    ) {
        let agents = &self.file.experts;
        let agent = |id: &str| agents.iter().position(|a| a.id == id);
        let mut p = Vec::with_capacity(agents.len());
        // Which agents' scores are actions the policy may take now.
        let mut valid = vec![true; agents.len()];
        let mut stage = 0;
        if self.file.mode == Mode::Cascade {
            let mut asked = vec![false; agents.len()];
            let mut answers = vec![None; agents.len()];
            for o in observed {
                if let Some(j) = agent(o.expert) {
                    asked[j] = true;
                    answers[j] = o.answer;
                }
            }
            let features = self.file.state_features(
                query.question(),
                query.context(),
                query.analysis(),
                &answers,
                &asked,
            );
            stage = asked.iter().filter(|a| **a).count().min(self.file.stages);
            self.file
                .stage_logits(self.entry(position), stage, &features, &mut p);
            if stage == self.file.stages {
                // The last stage keeps an answer seen: asking more is not an action.
                valid = asked;
            }
        } else {
            let probe_answers: Vec<Option<&str>> = self
                .file
                .probes
                .iter()
                .map(|id| {
                    observed
                        .iter()
                        .find(|o| o.expert == id)
                        .and_then(|o| o.answer)
                })
                .collect();
            let features = self.file.features(
                query.question(),
                query.context(),
                query.analysis(),
                &probe_answers,
            );
            self.file.logits(self.entry(position), &features, &mut p);
        }
        self.file
            .expected_costs(self.entry(position), stage, &mut p, &valid);
        out.clear();
        out.extend(experts.iter().map(|e| {
            let j = agent(e.id).filter(|&j| valid[j])?;
            Some(p[j])
        }));
    }
}

/// A short content digest (FNV-1a 64, hex) naming a policy file's version.
pub fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::features::{cascade_dense_len, featurize};

    #[test]
    fn a_walk_asks_only_the_agents_able_to_take_the_query() {
        let agents = 3;
        let full = featurize(
            "Who won?",
            "The Broncos won.",
            &[Some("Broncos"), Some("Broncos"), None],
        );
        let d = cascade_dense_len(agents);
        let standardize = Standardization {
            mean: vec![0.0; d],
            std: vec![1.0; d],
        };
        // Stage 0 asks agent 0 first, else 1, else 2 (biases only); stage 1, the last, keeps
        // the answer seen.
        let mut first = LinearRejector::zeros(agents, d, 0);
        first.bias = vec![3.0, 2.0, 1.0];
        let last = LinearRejector::zeros(agents, d, 0);
        let stages = [&first, &last];
        let mut scratch = (Vec::new(), Vec::new());
        let mut asked = vec![false; agents];
        assert_eq!(
            walk(&stages, &standardize, &full, &mut asked, &mut scratch),
            0
        );
        let mut asked = vec![false; agents];
        let able = [false, true, true];
        assert_eq!(
            walk_among(
                &stages,
                &standardize,
                &full,
                &mut asked,
                &able,
                &mut scratch
            ),
            1
        );
        assert_eq!(asked, [false, true, false]);
    }
}
