//! Cascade mode end to end: labels of the default pool (five replay experts with their
//! recorded answers) on a few SQuAD v1.1 articles, a cascade policy trained on half of them, and
//! the same policy served through `Router.Ask`: question by question, the live walk (experts
//! asked, answer kept, cost charged) equals the offline one.

mod common;

use common::spawn_policy_scheduler;
use l2d::core::learned::{LossKind, Mode};
use l2d::scheduler::SchedulerConfig;
use l2d::train::eval::{EvalOptions, choices};
use l2d::train::fit::FitConfig;
use l2d::train::labels::Labels;
use l2d::train::labels::{LabelOptions, label};
use l2d::train::select::{CvOptions, cross_validate};
use l2d::train::table::{AgreementTable, answered, normalised};
use l2d::train::{TrainOptions, probe_indices, train};
use l2d::{Ask, RouterClient};
use std::collections::HashSet;
use std::path::Path;

const ARTICLES: [&str; 4] = ["Super_Bowl_50", "Warsaw", "Normans", "Nikola_Tesla"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_cascade_walks_as_the_offline_evaluation_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pool = l2d::pool_file::PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    let dataset = l2d::squad::Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap();
    let articles: HashSet<String> = ARTICLES.iter().map(|a| a.to_string()).collect();
    let labels = label(
        &pool,
        &dataset,
        "dev.json",
        &LabelOptions {
            concurrency: 8,
            limit: None,
            progress: false,
            articles: Some(articles),
        },
    )
    .await
    .unwrap();
    assert!(labels.records.len() > 300, "{}", labels.records.len());
    let options = TrainOptions {
        lambdas: vec![0.02, 0.1],
        default_lambda: Some(0.02),
        mode: Mode::Cascade,
        probes: Vec::new(),
        stages: 3,
        loss: LossKind::Em,
        split_seed: 1,
        test_fraction: 0.5,
        fit: FitConfig {
            epochs: 40,
            ..FitConfig::default()
        },
    };
    let policy = train(&labels, &options).unwrap();
    assert_eq!((policy.mode, policy.stages), (Mode::Cascade, 3));
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, serde_json::to_string(&policy).unwrap()).unwrap();

    // Offline: the walk of the served entry on every test question.
    let test: HashSet<&str> = policy
        .split
        .test_articles
        .iter()
        .map(String::as_str)
        .collect();
    let records: Vec<_> = labels
        .records
        .iter()
        .filter(|r| test.contains(r.title.as_str()))
        .collect();
    let probes = probe_indices(&labels, &policy.probes).unwrap();
    let served = policy.nearest(policy.default_lambda);
    let offline = choices(&policy, served, &records, &labels, &probes);

    // Live, with no load term (the offline walk knows no load), every decision logged.
    let log_path = dir.path().join("decisions.jsonl");
    let config = SchedulerConfig {
        wait_price: 0.0,
        decision_log: Some(log_path.clone()),
        ..SchedulerConfig::default()
    };
    let (node, _scheduler, local) = spawn_policy_scheduler(config, &pool, &policy_path).await;
    let mut router = RouterClient::connect(&node.uri()).await.unwrap();
    let ids: Vec<&str> = labels
        .header
        .experts
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    let (mut staged, mut several) = (0, 0);
    for (r, &(agent, cost)) in records.iter().zip(&offline) {
        let answer = router
            .ask(Ask::new(r.question.clone(), r.context.clone()).id(r.id.clone()))
            .await
            .unwrap();
        assert_eq!(answer.expert_id, ids[agent], "question {}", r.id);
        assert_eq!(answer.cost, cost, "question {}", r.id);
        assert_eq!(
            answer.text,
            r.experts[agent].answer.clone().unwrap_or_default(),
            "question {}",
            r.id
        );
        let decision = answer.decision.expect("every answer carries its decision");
        // Every expert asked is listed, in order, and the reason says each stage's choice.
        let asked: f64 = decision
            .probes
            .iter()
            .map(|p| {
                labels.header.experts[ids.iter().position(|i| *i == p.expert_id).unwrap()].cost
            })
            .sum();
        assert_eq!(asked, cost, "question {}: {:?}", r.id, decision.probes);
        assert!(
            decision.reason.starts_with("stage 1: ask "),
            "{}",
            decision.reason
        );
        staged += decision.probes.len();
        several += usize::from(decision.probes.len() > 1);
    }
    // The policy did walk: some questions needed more than one expert.
    assert!(
        several > 0 && staged > records.len(),
        "{staged} asks, {several} with more than one"
    );
    node.stop().await;
    local.shutdown().await.unwrap();

    // Evaluated from its own log, the policy is its logger: it gives the answer logged for
    // every question (propensity 1), so the estimates, the logged EM and the directly computed
    // EM are one value, the offline walk's, and so is the cost.
    let log = l2d::train::offpolicy::read_log(&log_path).unwrap();
    let report = l2d::train::offpolicy::evaluate_from_log(&log, &labels, &policy).unwrap();
    assert_eq!(report.joined, records.len());
    let n = records.len() as f64;
    let em = 100.0
        * records
            .iter()
            .zip(&offline)
            .map(|(r, &(agent, _))| r.experts[agent].em)
            .sum::<f64>()
        / n;
    let cost = offline.iter().map(|&(_, c)| c).sum::<f64>() / n;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(report.direct_em, em), "{report:?} against {em}");
    assert!(close(report.logging_em, em), "{report:?} against {em}");
    assert!(
        close(report.estimated_em.ips, em),
        "{report:?} against {em}"
    );
    assert!(close(report.mean_cost, cost), "{report:?} against {cost}");
}

/// Four experts, no servers: `a` (cost 1) and `b` (cost 2) are each right on 60% of the
/// questions, independently, and their wrong answers never agree; `c` (cost 100) is always
/// right; `d` (cost 1.5) is never right. At lambda 0.3 (c's price 0.3 of a whole loss) the best
/// walk asks `a` and `b`, keeps their answer when they agree (both right) and asks `c` when
/// they do not: expected cost 0.20, against 0.30 for asking `c` at once and 0.40 for keeping
/// `a`. `d` is cheaper than `b` but useless: only the cost of what follows says so.
fn agreement_labels(questions: usize, articles: usize, seed: u64) -> Labels {
    use l2d::core::learned::Agent;
    use l2d::train::labels::{ExpertLabel, LabelHeader, LabelRecord};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let records = (0..questions)
        .map(|i| {
            let mut label = |expert: &str, p: f64, cost: f64| {
                let right = rng.random::<f64>() < p;
                ExpertLabel {
                    expert: expert.into(),
                    answer: Some(if right {
                        format!("gold {i}")
                    } else {
                        format!("{expert}wrong {i}")
                    }),
                    em: f64::from(u8::from(right)),
                    f1: f64::from(u8::from(right)),
                    latency_us: 100,
                    cost,
                    error: None,
                }
            };
            let experts = vec![
                label("a", 0.6, 1.0),
                label("b", 0.6, 2.0),
                label("c", 1.0, 100.0),
                label("d", 0.0, 1.5),
            ];
            LabelRecord {
                id: format!("q{i}"),
                title: format!("article-{}", i % articles),
                question: "What was it?".into(),
                context: "It was something.".into(),
                experts,
            }
        })
        .collect();
    let agent = |id: &str, cost: f64| Agent {
        id: id.into(),
        cost,
    };
    Labels {
        header: LabelHeader {
            format: l2d::train::labels::LABELS_FORMAT.into(),
            data: "synthetic".into(),
            metric: "v1.1".into(),
            experts: vec![
                agent("a", 1.0),
                agent("b", 2.0),
                agent("c", 100.0),
                agent("d", 1.5),
            ],
        },
        records,
    }
}

/// A three-stage cascade at lambda 0.3 on [`agreement_labels`], `test_fraction` of the articles
/// held out.
fn agreement_options(test_fraction: f64) -> TrainOptions {
    TrainOptions {
        lambdas: vec![0.3],
        default_lambda: None,
        mode: Mode::Cascade,
        probes: Vec::new(),
        stages: 3,
        loss: LossKind::Em,
        split_seed: 1,
        test_fraction,
        fit: FitConfig {
            epochs: 200,
            ..FitConfig::default()
        },
    }
}

/// Whether a walk (agent kept, cost paid) on `r` is the best one: `a` and `b` asked, then their
/// agreed answer kept, or `c` asked when they disagree and its answer (given by `c` or by the
/// one that agrees with it) kept.
fn best_walk(r: &l2d::train::labels::LabelRecord, kept: usize, cost: f64) -> bool {
    let agree = r.experts[0].answer == r.experts[1].answer;
    if agree {
        cost == 3.0 && kept < 2
    } else {
        cost == 103.0 && r.experts[kept].answer == r.experts[2].answer
    }
}

#[test]
fn backward_induction_learns_to_ask_the_dear_expert_only_when_the_cheap_ones_disagree() {
    let labels = agreement_labels(1200, 12, 7);
    let options = agreement_options(0.5);
    let policy = train(&labels, &options).unwrap();
    let test: HashSet<&str> = policy
        .split
        .test_articles
        .iter()
        .map(String::as_str)
        .collect();
    let records: Vec<_> = labels
        .records
        .iter()
        .filter(|r| test.contains(r.title.as_str()))
        .collect();
    let walks = choices(&policy, 0, &records, &labels, &[]);
    let best = records
        .iter()
        .zip(&walks)
        .filter(|(r, (kept, cost))| best_walk(r, *kept, *cost))
        .count();
    assert!(
        best as f64 >= 0.95 * records.len() as f64,
        "the learned cascade walks the best way on {best} of {} questions",
        records.len()
    );

    // The agreement table, fitted on the same training articles, finds the same walk.
    let train_set: HashSet<&str> = policy
        .split
        .train_articles
        .iter()
        .map(String::as_str)
        .collect();
    let train_records: Vec<_> = labels
        .records
        .iter()
        .filter(|r| train_set.contains(r.title.as_str()))
        .collect();
    let costs = [1.0, 2.0, 100.0, 1.5];
    let table = AgreementTable::fit(&answered(&train_records), &costs, 3, 0.3, |r, j| {
        1.0 - r.experts[j].em
    });
    for r in &records {
        let (kept, asked) = table.walk(&normalised(r));
        let cost: f64 = costs
            .iter()
            .enumerate()
            .filter(|(k, _)| asked >> k & 1 == 1)
            .map(|(_, c)| c)
            .sum();
        assert!(
            best_walk(r, kept, cost),
            "{}: kept {kept} at cost {cost}",
            r.id
        );
    }
}

#[test]
fn cross_validation_never_lets_a_test_article_influence_a_choice() {
    let labels = agreement_labels(600, 12, 11);
    let base = TrainOptions {
        lambdas: vec![0.05, 0.3],
        default_lambda: None,
        mode: Mode::Route,
        probes: Vec::new(),
        stages: 0,
        loss: LossKind::Em,
        split_seed: 1,
        test_fraction: 0.5,
        fit: FitConfig {
            epochs: 30,
            ..FitConfig::default()
        },
    };
    let options = CvOptions {
        folds: 3,
        at_cost: 0.5,
        seed: 5,
        eval: EvalOptions::default(),
    };
    let report = cross_validate(&labels, &base, &options).unwrap();
    assert_eq!(report.folds.len(), 3);
    let fold0 = &report.folds[0];
    // The same labels with every answer of fold 0's test articles made right for `a` and wrong
    // for everyone else: fold 0's choices must not move, its test figures must.
    let test: HashSet<String> = fold0.articles.iter().cloned().collect();
    let mut changed = labels.clone();
    for r in changed
        .records
        .iter_mut()
        .filter(|r| test.contains(&r.title))
    {
        for (j, e) in r.experts.iter_mut().enumerate() {
            let right = j == 0;
            e.em = f64::from(u8::from(right));
            e.f1 = e.em;
            e.answer = Some(format!("{} {j}", r.id));
        }
    }
    let again = cross_validate(&changed, &base, &options).unwrap();
    let again0 = &again.folds[0];
    assert_eq!(
        serde_json::to_value(&again0.selection).unwrap(),
        serde_json::to_value(&fold0.selection).unwrap()
    );
    assert_ne!(again0.selected.em, fold0.selected.em);
    // The agreement table's lambda too is chosen on validation articles only.
    assert_eq!(again0.agreement_table.lambda, fold0.agreement_table.lambda);
    // The cross-validated figures are the folds' mean.
    let mean = report.folds.iter().map(|f| f.selected.gap).sum::<f64>() / 3.0;
    assert!((report.mean.gap - mean).abs() < 1e-9);
    // This pool has none of the hand cascade's experts: no bar about it, and the report says so
    // instead of printing a mean of nothing.
    assert!(report.folds.iter().all(|f| f.report.cascade.is_none()));
    assert!(report.bars.iter().all(|b| !b.name.contains("hand cascade")));
    let markdown = l2d::train::select::to_markdown(&report);
    assert!(!markdown.contains("NaN"), "{markdown}");
    assert!(
        markdown.contains("no hand cascade in this pool"),
        "{markdown}"
    );
}

#[test]
fn train_with_no_flags_chooses_the_mode_and_lambda_on_validation() {
    let dir = tempfile::tempdir().unwrap();
    let labels_path = dir.path().join("labels.jsonl");
    agreement_labels(800, 16, 3).write(&labels_path).unwrap();
    let policy_path = dir.path().join("policy.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["train", "--labels"])
        .arg(&labels_path)
        .args(["--out"])
        .arg(&policy_path)
        .args(["--lambda", "0.02,0.1,0.3", "--epochs", "40"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Every candidate is reported on validation, then the choice.
    for name in [
        "route",
        "defer (a, b)",
        "defer (a, d)",
        "defer (b, d)",
        "cascade (up to 2 experts)",
        "cascade (up to 3 experts)",
    ] {
        assert!(
            stderr.contains(&format!(": {name} ")),
            "{name} missing from {stderr}"
        );
    }
    let policy =
        l2d::core::learned::PolicyFile::parse(&std::fs::read_to_string(&policy_path).unwrap())
            .unwrap();
    // Keeping an answer the cheap experts agree on, else asking the dear one, beats any single
    // expert the route policy can pick (60% EM at most); the lambda served is one of the bank's.
    assert_ne!(policy.mode, Mode::Route, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "l2d: chose {}",
            if policy.mode == Mode::Cascade {
                "cascade"
            } else {
                "defer"
            }
        )),
        "{stderr}"
    );
    assert!(
        policy
            .bank
            .iter()
            .any(|e| e.lambda == policy.default_lambda)
    );
}

/// With a mode and a cost target, the choices the flags leave open are made on validation among
/// that mode's candidates alone: the cascade's number of stages when `--stages` is not given,
/// none when it is.
#[test]
fn a_mode_with_a_cost_target_chooses_what_its_flags_leave_open() {
    let dir = tempfile::tempdir().unwrap();
    let labels_path = dir.path().join("labels.jsonl");
    agreement_labels(400, 12, 3).write(&labels_path).unwrap();
    let train = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_l2d"))
            .args(["train", "--labels"])
            .arg(&labels_path)
            .args(["--out"])
            .arg(dir.path().join("policy.json"))
            .args([
                "--lambda", "0.02,0.3", "--epochs", "20", "--mode", "cascade",
            ])
            .args(["--at-cost", "0.5"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let validated = |name: &str| stderr.contains(&format!(": {name} "));
        (
            validated("cascade (up to 2 experts)"),
            validated("cascade (up to 3 experts)"),
            validated("route") || stderr.contains(": defer ("),
            stderr,
        )
    };
    let (two, three, other_modes, stderr) = train(&[]);
    assert!(two && three && !other_modes, "{stderr}");
    let (two, three, other_modes, stderr) = train(&["--stages", "2"]);
    assert!(two && !three && !other_modes, "{stderr}");
}

/// `train_recommended` on every article of `labels` (none held out for test), for a cost target
/// of half the always-best expert's, among `candidate` alone.
fn recommend(
    labels: &Labels,
    base: &TrainOptions,
    candidate: l2d::train::select::Candidate,
) -> (
    l2d::core::learned::PolicyFile,
    l2d::train::select::Selection,
) {
    let mut titles: Vec<String> = labels.records.iter().map(|r| r.title.clone()).collect();
    titles.sort();
    titles.dedup();
    l2d::train::select::train_recommended(labels, base, titles, Vec::new(), 0.5, vec![candidate])
        .unwrap()
}

/// The recommended policy is trained at the L2 strengths chosen on validation and serves only
/// the lambdas whose validation point is not under the single experts' mix line. With `a` and
/// `d` as probes nothing tells when `a` is wrong (`d` never is right), so an entry either keeps
/// `a`'s answer after paying for both probes (60 EM at cost 2.5: under the line, which `a`
/// alone reaches at cost 1) or asks `c` (100 EM at 102.5: on the line, which `c` tops).
#[test]
fn the_recommended_policy_keeps_the_choices_made_on_validation() {
    use l2d::train::select::{Candidate, Regularisation};
    let labels = agreement_labels(800, 16, 3);
    let base = TrainOptions {
        lambdas: vec![0.0, 2.0],
        mode: Mode::Defer,
        probes: vec!["a".into(), "d".into()],
        stages: 0,
        test_fraction: 0.0,
        ..agreement_options(0.0)
    };
    let only = Candidate {
        mode: Mode::Defer,
        probes: base.probes.clone(),
        stages: 0,
    };
    let (policy, selection) = recommend(&labels, &base, only);
    let tuned = selection.tuned();
    let points = &tuned.points;
    assert!(points[0].1 > 99.0 && points[1].1 < 70.0, "{points:?}");
    assert_eq!(tuned.kept, vec![0.0], "{points:?}");
    let served: Vec<f64> = policy.bank.iter().map(|e| e.lambda).collect();
    assert_eq!(served, tuned.kept);
    assert_eq!(policy.default_lambda, 0.0);
    // The defaults first, then each of the two groups (question, answers) times 0.3 and 3; the
    // one kept is at least as accurate on validation as any tried, and is the one trained.
    assert_eq!(selection.tuning.len(), 5);
    assert_eq!(
        selection.tuning[0].regularisation,
        Regularisation::of(&base.fit)
    );
    assert!(selection.tuning.iter().all(|v| v.em <= tuned.em));
    assert_eq!(
        (policy.training.l2, policy.training.l2_probe),
        (tuned.regularisation.l2, tuned.regularisation.l2_answers)
    );
}

/// Where the validation cost crosses the target between two lambdas of the bank, lambdas
/// between them are trained, validated, and (when kept) served. On [`agreement_labels`] a
/// route policy sends every question to `c` (cost 100, always right) at lambda 0 and to a cheap
/// expert (cost 1 or 2, right 60% of the time) once lambda passes about 0.4, so a target of half
/// of `c`'s cost lies in the step between the grid's 0 and 30. The first round tries 10 and 20
/// (both cheap, so the step that still crosses is 0 to 10), the second 3.33 and 6.67.
#[test]
fn the_lambdas_around_the_cost_target_are_searched_on_validation_and_served() {
    use l2d::train::select::{Candidate, REFINE_ROUNDS};
    let labels = agreement_labels(800, 16, 3);
    let base = TrainOptions {
        lambdas: vec![0.0, 30.0],
        mode: Mode::Route,
        stages: 0,
        test_fraction: 0.0,
        ..agreement_options(0.0)
    };
    let route = Candidate {
        mode: Mode::Route,
        probes: Vec::new(),
        stages: 0,
    };
    let (policy, selection) = recommend(&labels, &base, route);
    let tuned = selection.tuned();
    let lambdas: Vec<f64> = tuned.points.iter().map(|p| p.0).collect();
    // The grid's two, and two more per round, in ascending order.
    assert_eq!(
        lambdas,
        vec![0.0, 3.33, 6.67, 10.0, 20.0, 30.0],
        "{:?}",
        tuned.points
    );
    assert_eq!(lambdas.len(), 2 + 2 * REFINE_ROUNDS);
    // Only lambda 0 asks `c`.
    assert!(tuned.points[0].2 > 90.0, "{:?}", tuned.points);
    assert!(
        tuned.points[1..].iter().all(|p| p.2 <= 2.0),
        "{:?}",
        tuned.points
    );
    // Every entry kept is trained on all the training articles and served, in lambda order,
    // and the one served by default is the selected one.
    let served: Vec<f64> = policy.bank.iter().map(|e| e.lambda).collect();
    assert_eq!(served, tuned.kept);
    assert!(served.len() > 2, "{served:?}");
    assert_eq!(policy.default_lambda, selection.lambda);
    // Each entry served carries the maps fitted for its own lambda on the held-out folds.
    for entry in &policy.bank {
        let (_, maps) = selection
            .calibration
            .iter()
            .find(|(lambda, _)| *lambda == entry.lambda)
            .unwrap();
        assert!(!entry.calibration.is_empty(), "{}", entry.lambda);
        assert_eq!(&entry.calibration, maps, "{}", entry.lambda);
    }
}

/// The scores a calibrated cascade serves are expected deferral costs: on the labels above at
/// lambda 0.3, asking `a` first costs 0.20 in expectation (see [`agreement_labels`]); with `a`
/// and `b` asked and agreeing, keeping their answer costs 0 (they are both right); disagreeing,
/// asking `c` costs its price, 0.3. And the best-scored action is the one the offline walk takes.
#[test]
fn a_calibrated_cascade_scores_actions_in_expected_cost() {
    use l2d::core::learned::LearnedPolicy;
    use l2d::core::policy::{ExpertMeta, Observed, Policy};
    use l2d::core::query::{Query, QueryLimits};
    let labels = agreement_labels(2400, 16, 11);
    let options = agreement_options(0.25);
    let (file, calibrated) = l2d::train::select::train_calibrated(&labels, &options).unwrap();
    assert!(calibrated);
    assert_eq!(file.bank[0].calibration.len(), 4, "one map per stage");
    // Offline, priced: waiting for `c` at more than a wrong answer costs means never asking it;
    // priced at nothing, the rejector's own walk.
    let records: Vec<_> = labels.records.iter().take(300).collect();
    let own = l2d::train::eval::choices_at(&file, &[0], &records, &labels, &[]);
    let free = l2d::train::eval::choices_priced(&file, &[0], &records, &labels, &[], &[0.0; 4]);
    assert_eq!(own, free);
    let slow_c = [0.0, 0.0, 2.0, 0.0];
    let priced = l2d::train::eval::choices_priced(&file, &[0], &records, &labels, &[], &slow_c);
    assert!(
        priced[0]
            .iter()
            .all(|&(kept, cost)| kept != 2 && cost < 100.0)
    );
    assert!(
        own[0].iter().any(|&(kept, _)| kept == 2),
        "unpriced, c answers sometimes"
    );
    let policy = LearnedPolicy::new(file, None, "test");
    let experts: Vec<ExpertMeta<'_>> = labels
        .header
        .experts
        .iter()
        .map(|a| ExpertMeta {
            id: &a.id,
            cost: a.cost,
        })
        .collect();
    let query = Query::new(
        "What was it?",
        "It was something.",
        None,
        &QueryLimits::default(),
    )
    .unwrap();
    let best = |observed: &[Observed<'_>]| {
        let mut scores = Vec::new();
        policy.score(0, &query, observed, &experts, &mut scores);
        let (j, s) = scores
            .iter()
            .enumerate()
            .filter_map(|(j, s)| s.map(|s| (j, s)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        (labels.header.experts[j].id.as_str(), s)
    };
    let (first, cost) = best(&[]);
    assert!(first == "a" || first == "b", "asks {first} first");
    assert!((cost - 0.20).abs() < 0.06, "asking {first} first: {cost}");
    let agree = [
        Observed {
            expert: "a",
            answer: Some("gold 1"),
        },
        Observed {
            expert: "b",
            answer: Some("gold 1"),
        },
    ];
    let (kept, cost) = best(&agree);
    assert!(kept == "a" || kept == "b", "keeps {kept}");
    assert!(cost < 0.06, "keeping an agreed answer: {cost}");
    let disagree = [
        Observed {
            expert: "a",
            answer: Some("awrong 1"),
        },
        Observed {
            expert: "b",
            answer: Some("gold 1"),
        },
    ];
    let (next, cost) = best(&disagree);
    assert_eq!(next, "c");
    assert!(
        (cost - 0.30).abs() < 0.06,
        "asking c after a disagreement: {cost}"
    );
}

/// Calibration maps are fitted per lambda: a bank fitted on fewer questions whose entries are in
/// another order than the served bank's still gives each served entry its own lambda's maps.
#[test]
fn each_entry_is_calibrated_on_its_own_lambda_whatever_the_bank_order() {
    use l2d::train::calibrate::calibrate;
    let labels = agreement_labels(2400, 16, 11);
    let mut options = agreement_options(0.25);
    options.lambdas = vec![0.05, 0.15, 0.3];
    let policy = train(&labels, &options).unwrap();
    let records = labels.in_articles(&policy.split.test_articles);
    let mut in_order = policy.clone();
    calibrate(&labels, &[(&policy, records.as_slice())], &mut in_order).unwrap();
    let maps = |p: &l2d::core::learned::PolicyFile| -> Vec<_> {
        p.bank.iter().map(|e| e.calibration.clone()).collect()
    };
    let fitted = maps(&in_order);
    assert!(
        fitted.iter().all(|m| !m.is_empty()),
        "every entry calibrated: {:?}",
        fitted.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_ne!(fitted[0], fitted[2], "the lambdas' maps differ");
    let mut reversed = policy.clone();
    reversed.bank.reverse();
    let mut target = policy.clone();
    calibrate(&labels, &[(&reversed, records.as_slice())], &mut target).unwrap();
    assert_eq!(maps(&target), fitted);
    // A served lambda the fitted bank does not hold is refused, not matched to another.
    let mut fewer = policy.clone();
    fewer.bank.truncate(2);
    let mut served = policy.clone();
    let refused = calibrate(&labels, &[(&fewer, records.as_slice())], &mut served).unwrap_err();
    assert!(refused.to_string().contains("lambda 0.3"), "{refused}");
}
