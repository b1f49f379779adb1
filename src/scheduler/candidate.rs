//! A candidate policy beside the one in force, to try it before it serves everyone
//! (`--candidate-policy FILE --candidate-share F`).
//!
//! - **Rollout.** A share F of the requests, drawn per request, is decided by the candidate
//!   instead: its answers, its cost. Every request is counted under the policy that decided it
//!   (`l2d_policy_asks_total{policy_id,role,code}`, `l2d_policy_cost_charged_units_total`).
//! - **Shadow.** On every other request the candidate decides too, after the fact and without
//!   any call: the answers the request saw (its probes, stages and final answer) are fed to the
//!   candidate's own request machine ([`Ask`]) in place of calls. Where it would have asked an
//!   expert the request did not hear from, its decision is unknown (`unobserved`); otherwise it
//!   agrees with the expert that answered or not, and what it would have paid is its probes' and
//!   its choice's declared prices. Exported as `l2d_shadow_decisions_total{policy_id,outcome}`,
//!   `l2d_shadow_cost_units_total{policy_id}` and, on the same requests, the cost the policy in
//!   force charged, `l2d_shadow_serving_cost_units_total{policy_id}`; logged in the decision log
//!   with `"shadow": true`. With F = 0 the candidate never changes an answer.
//!
//! The candidate file is re-read when it changes, like the policy file; a refused file leaves
//! the candidate as it was.

use super::{ActivePolicy, load_policy_file};
use crate::core::ask::{self, Ask, AskParams, CallResult, Chosen, ExpertView, Explanation, Step};
use crate::core::call::Miss;
use crate::core::policy::{ExpertMeta, Observed};
use crate::core::query::Query;
use crate::telemetry::{CodeCounts, PoolSeries};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tonic::Code;

/// The candidate, its file and share, and what it did.
pub struct Candidate {
    policy: ArcSwap<ActivePolicy>,
    path: PathBuf,
    lambda: Option<f64>,
    digest: Mutex<String>,
    share: f64,
    /// Requests the candidate decided (`role="candidate"`) and the others (`role="serving"`).
    arms: [Arm; 2],
    shadow: ShadowCounters,
}

#[derive(Default)]
struct Arm {
    /// The id of the policy last counted here (the counts restart when it changes).
    policy_id: Mutex<String>,
    asks: CodeCounts,
    charged_micro_units: AtomicU64,
}

#[derive(Default)]
struct ShadowCounters {
    agree: AtomicU64,
    disagree: AtomicU64,
    unobserved: AtomicU64,
    cost_micro_units: AtomicU64,
    serving_cost_micro_units: AtomicU64,
}

/// Which policy decides a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    Serving = 0,
    Candidate = 1,
}

impl Decider {
    fn label(self) -> &'static str {
        match self {
            Decider::Serving => "serving",
            Decider::Candidate => "candidate",
        }
    }
}

/// What the candidate would have done on a request it did not decide.
#[derive(Debug, Clone, PartialEq)]
pub enum Shadow {
    /// It would have answered with `expert` (an index into the view) at this declared cost,
    /// after this decision.
    Decided {
        expert: usize,
        cost: f64,
        decision: Option<Box<Chosen>>,
    },
    /// It needed an answer the request never saw.
    Unobserved,
}

fn micro(cost: f64) -> u64 {
    (cost.max(0.0) * 1e6).round() as u64
}

impl Candidate {
    /// Loads the candidate from `path` (at bank entry `lambda`, else its default) to decide a
    /// `share` of the requests, in [0, 1].
    pub fn load(path: PathBuf, lambda: Option<f64>, share: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&share),
            "--candidate-share must be in [0, 1], got {share}"
        );
        let (policy, digest) = load_policy_file(&path, lambda)?;
        let position = crate::core::policy::Policy::default_position(&policy);
        Ok(Self {
            policy: ArcSwap::from_pointee(ActivePolicy::new(Box::new(policy), position)),
            path,
            lambda,
            digest: Mutex::new(digest),
            share,
            arms: Default::default(),
            shadow: Default::default(),
        })
    }

    pub fn policy(&self) -> Arc<ActivePolicy> {
        self.policy.load_full()
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// Whether request `number` is the candidate's to decide: a fixed share of the request
    /// numbers, spread by a hash so no traffic pattern lines up with it.
    pub fn decides(&self, number: u64, seed: u64) -> bool {
        let draw = (crate::core::rng::mix(number ^ seed.rotate_left(17)) >> 11) as f64
            / (1u64 << 53) as f64;
        draw < self.share
    }

    /// Re-reads the candidate file: `Ok(Some(id))` when a new candidate is in place.
    pub fn reload(&self) -> Result<Option<String>, String> {
        let (policy, digest) =
            load_policy_file(&self.path, self.lambda).map_err(|e| format!("{e:#}"))?;
        let mut loaded = self.digest.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == digest {
            return Ok(None);
        }
        let id = crate::core::policy::Policy::identity(&policy).id.clone();
        let position = crate::core::policy::Policy::default_position(&policy);
        self.policy
            .store(Arc::new(ActivePolicy::new(Box::new(policy), position)));
        *loaded = digest;
        Ok(Some(id))
    }

    /// Counts a request under the policy (`policy_id`, in `role`) that decided it.
    pub fn record_ask(&self, role: Decider, policy_id: &str, code: Code, charged: f64) {
        let arm = &self.arms[role as usize];
        {
            let mut id = arm.policy_id.lock().unwrap_or_else(|e| e.into_inner());
            if *id != policy_id {
                // Another policy now: its counts start from zero (the series' label changes).
                policy_id.clone_into(&mut id);
                arm.asks.reset();
                arm.charged_micro_units.store(0, Ordering::Relaxed);
            }
        }
        arm.asks.increment(code);
        arm.charged_micro_units
            .fetch_add(micro(charged), Ordering::Relaxed);
    }

    /// Counts the candidate's shadow decision on a request that `served` (an index into the
    /// view, if anyone answered) at `charged`.
    pub fn record_shadow(&self, shadow: &Shadow, served: Option<usize>, charged: f64) {
        let s = &self.shadow;
        match (shadow, served) {
            (&Shadow::Decided { expert, cost, .. }, Some(served)) => {
                let agreed = if expert == served {
                    &s.agree
                } else {
                    &s.disagree
                };
                agreed.fetch_add(1, Ordering::Relaxed);
                s.cost_micro_units.fetch_add(micro(cost), Ordering::Relaxed);
                s.serving_cost_micro_units
                    .fetch_add(micro(charged), Ordering::Relaxed);
            }
            _ => {
                s.unobserved.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The series (at scrape time).
    pub fn write(&self, out: &mut PoolSeries) {
        for role in [Decider::Serving, Decider::Candidate] {
            let arm = &self.arms[role as usize];
            let id = arm
                .policy_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if id.is_empty() {
                continue;
            }
            let labels = [("policy_id", id.as_str()), ("role", role.label())];
            out.codes("l2d_policy_asks_total", &labels, &arm.asks);
            let charged = arm.charged_micro_units.load(Ordering::Relaxed) as f64 / 1e6;
            out.sample("l2d_policy_cost_charged_units_total", &labels, charged);
        }
        let policy = self.policy();
        let id = [("policy_id", policy.identity().id.as_str())];
        let s = &self.shadow;
        for (outcome, n) in [
            ("agree", &s.agree),
            ("disagree", &s.disagree),
            ("unobserved", &s.unobserved),
        ] {
            let labels = [id[0], ("outcome", outcome)];
            let n = n.load(Ordering::Relaxed) as f64;
            out.sample("l2d_shadow_decisions_total", &labels, n);
        }
        let units = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / 1e6;
        out.sample(
            "l2d_shadow_cost_units_total",
            &id,
            units(&s.cost_micro_units),
        );
        out.sample(
            "l2d_shadow_serving_cost_units_total",
            &id,
            units(&s.serving_cost_micro_units),
        );
    }
}

/// What `candidate` would have decided on a request whose calls `explanation` records, that
/// `served` answered with `served_text`: its own request machine, run with the answers seen in
/// place of calls. No call is made.
pub fn shadow_decision(
    candidate: &ActivePolicy,
    view: &[ExpertView<'_>],
    metas: &[ExpertMeta<'_>],
    query: &Query,
    params: AskParams,
    explanation: &Explanation,
    served: Option<(usize, &str)>,
) -> Shadow {
    // What the request heard from each expert: an answer, or how the call missed.
    let mut heard: Vec<Option<Result<String, Miss>>> = vec![None; view.len()];
    for probe in &explanation.probes {
        heard[probe.expert] = match (&probe.text, probe.miss) {
            (Some(text), _) => Some(Ok(text.clone())),
            (None, Some(miss)) => Some(Err(miss)),
            (None, None) => None,
        };
    }
    if let Some((expert, text)) = served {
        heard[expert] = Some(Ok(text.to_owned()));
    }
    let probes = candidate.probes_in(view);
    let params = AskParams {
        stages: candidate.stages(),
        explore: 0.0,
        ..params
    };
    let scorer = |observed: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
        candidate.score(query, observed, metas, out)
    };
    let Ok(mut ask) = Ask::<String, _>::new(view, &probes, params, scorer) else {
        return Shadow::Unobserved;
    };
    let mut cost = 0.0;
    loop {
        match ask.next_step() {
            Step::Call(call) => {
                cost += view[call.expert].price;
                if call.role == ask::Role::Answer {
                    return Shadow::Decided {
                        expert: call.expert,
                        cost,
                        decision: ask.finish().explanation.decision.map(Box::new),
                    };
                }
                let result = match &heard[call.expert] {
                    Some(Ok(text)) => CallResult::Answered(text.clone()),
                    Some(Err(miss)) => CallResult::Missed(*miss),
                    None => return Shadow::Unobserved,
                };
                ask.record(call.id, result, std::time::Duration::ZERO);
            }
            Step::Wait => return Shadow::Unobserved,
            Step::Done => break,
        }
    }
    let finished = ask.finish();
    match finished.outcome {
        // It keeps an answer it has seen: no further call.
        Ok(kept) => Shadow::Decided {
            expert: kept.expert,
            cost,
            decision: finished.explanation.decision.map(Box::new),
        },
        Err(_) => Shadow::Unobserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ask::ProbeRecord;
    use crate::core::call::Failure;
    use crate::core::decision::ReplicaLoad;
    use crate::core::policy::{Policy, PolicyIdentity};

    const BROKEN: Miss = Miss::Failed(Failure::Broken);

    /// A policy that prefers the cheapest expert whose answer agrees with `probe`'s, else the
    /// last expert; probes `probe` first when it has one.
    struct Agreeing {
        identity: PolicyIdentity,
        probes: Vec<String>,
    }

    impl Policy for Agreeing {
        fn score(
            &self,
            _position: usize,
            _query: &Query,
            observed: &[Observed<'_>],
            experts: &[ExpertMeta<'_>],
            out: &mut Vec<Option<f64>>,
        ) {
            out.clear();
            let probe = observed.first().and_then(|o| o.answer);
            out.extend(experts.iter().enumerate().map(|(i, _)| {
                Some(match (i, probe) {
                    (0, Some(_)) => 0.1,
                    (0, None) => 0.9,
                    (_, _) => 0.5 - i as f64 * 0.01,
                })
            }));
        }

        fn lambdas(&self) -> &[f64] {
            &[0.0]
        }

        fn identity(&self) -> &PolicyIdentity {
            &self.identity
        }

        fn probes(&self) -> &[String] {
            &self.probes
        }
    }

    fn candidate(probes: &[&str]) -> ActivePolicy {
        let policy = Agreeing {
            identity: PolicyIdentity {
                id: "candidate".into(),
                kind: "test".into(),
                description: String::new(),
            },
            probes: probes.iter().map(|p| p.to_string()).collect(),
        };
        ActivePolicy::new(Box::new(policy), 0)
    }

    fn explanation(probes: Vec<ProbeRecord>) -> Explanation {
        Explanation {
            probes,
            stages: Vec::new(),
            calls: Vec::new(),
            decision: None,
            charged: 0.0,
        }
    }

    /// (expert, cost) of a decided shadow.
    fn decided(shadow: Shadow) -> Option<(usize, f64)> {
        match shadow {
            Shadow::Decided { expert, cost, .. } => Some((expert, cost)),
            Shadow::Unobserved => None,
        }
    }

    #[test]
    fn the_candidate_decides_from_the_answers_the_request_saw_without_calls() {
        let idle = [ReplicaLoad::idle(0.01)];
        let view: Vec<ExpertView<'_>> = [("a", 1.0), ("b", 5.0), ("c", 20.0)]
            .iter()
            .map(|&(id, price)| ExpertView {
                id,
                price,
                replicas: &idle,
                unfit: None,
            })
            .collect();
        let metas: Vec<ExpertMeta<'_>> = view
            .iter()
            .map(|e| ExpertMeta {
                id: e.id,
                cost: e.price,
            })
            .collect();
        let query = Query::new("q?", "c.", None, &Default::default()).unwrap();
        let params = AskParams::default();
        let probing = candidate(&["a"]);
        let heard_a = |text: Option<&str>, miss: Option<Miss>| {
            explanation(vec![ProbeRecord {
                expert: 0,
                text: text.map(str::to_owned),
                replica: Some(0),
                miss,
            }])
        };
        let shadow = |policy: &ActivePolicy, heard: &Explanation, served: Option<(usize, &str)>| {
            decided(shadow_decision(
                policy, &view, &metas, &query, params, heard, served,
            ))
        };
        // The request heard a's answer: the candidate keeps it, having paid for the probe only.
        let heard = heard_a(Some("x"), None);
        assert_eq!(shadow(&probing, &heard, Some((2, "y"))), Some((0, 1.0)));
        // a failed for the request: the candidate defers to its next best, c (the last).
        let heard = heard_a(None, Some(BROKEN));
        assert_eq!(shadow(&probing, &heard, Some((2, "y"))), Some((2, 21.0)));
        // The request never asked a: what the candidate would do is unknown.
        let nothing = explanation(Vec::new());
        assert_eq!(shadow(&probing, &nothing, Some((1, "y"))), None);
        // A candidate that probes nothing decides from the query alone.
        assert_eq!(
            shadow(&candidate(&[]), &nothing, Some((1, "y"))),
            Some((2, 20.0))
        );
    }

    #[test]
    fn the_share_decides_that_fraction_of_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies/squad-v1.1.json"),
            &path,
        )
        .unwrap();
        for share in [0.0, 0.1, 0.5, 1.0] {
            let c = Candidate::load(path.clone(), None, share).unwrap();
            let n = (0..20_000u64).filter(|&i| c.decides(i, 7)).count();
            let got = n as f64 / 20_000.0;
            assert!((got - share).abs() < 0.015, "share {share}: {got}");
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            let refused = Candidate::load(path.clone(), None, bad).err().unwrap();
            assert!(
                refused.to_string().contains("--candidate-share"),
                "{refused}"
            );
        }
    }
}
