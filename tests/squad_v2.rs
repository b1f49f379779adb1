//! Another pool on another kind of data, end to end through the CLI: a SQuAD v2.0 file with
//! unanswerable questions, three replay experts with made-up names and costs that sometimes
//! answer "no answer" (the empty string), labelled through gRPC, the recommended policy trained
//! with no mode flag, evaluated, cross-validated, and served by a scheduler. Nothing here is
//! the default pool or SQuAD v1.1: the method must not depend on either.

mod common;

use common::process::{L2D, Proc};
use l2d::{Ask, RouterClient};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const ARTICLES: usize = 8;

/// The experts: (id, cost, chance of a right answer to an answerable question, chance of
/// answering "no answer" to an unanswerable one).
const EXPERTS: [(&str, f64, u64, u64); 3] = [
    ("quick", 2.0, 55, 50),
    ("steady", 9.0, 80, 80),
    ("exact", 40.0, 100, 100),
];

/// A question of the data set: (article, id, question, context, right answer; "" when the
/// context does not answer it).
type Question = (usize, String, String, String, String);

fn questions() -> Vec<Question> {
    let names = [
        "Ada", "Boris", "Chen", "Dara", "Emil", "Farah", "Gus", "Hana",
    ];
    let cities = [
        "Oslo", "Lima", "Pune", "Riga", "Kobe", "Accra", "Bern", "Cork",
    ];
    let mut out = Vec::new();
    for a in 0..ARTICLES {
        for p in 0..2 {
            let (name, city) = (names[(a + p) % 8], cities[(a + 3 * p) % 8]);
            let org = format!("Guild {a}{p}");
            let context = format!(
                "In {}, {name} founded the {org} in {city}. The {org} has {} members.",
                1900 + 7 * a + p,
                40 + a * 3 + p
            );
            let asked = [
                (format!("Who founded the {org}?"), name.to_owned()),
                (format!("Where was the {org} founded?"), city.to_owned()),
                (format!("Who closed the {org}?"), String::new()),
                (format!("When did the {org} move to Paris?"), String::new()),
            ];
            for (k, (question, answer)) in asked.into_iter().enumerate() {
                let id = format!("a{a}p{p}q{k}");
                out.push((a, id, question, context.clone(), answer));
            }
        }
    }
    out
}

/// A deterministic draw in 0..100 per (question, expert).
fn draw(id: &str, expert: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(expert.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 7) % 100
}

/// What `expert` answers: right or a wrong span of the context; to an unanswerable question,
/// "no answer" or a made-up span.
fn answer_of(expert: (&str, f64, u64, u64), q: &Question) -> String {
    let (id, right) = (&q.1, &q.4);
    let roll = draw(id, expert.0);
    // The year: a span of the context that answers none of the questions.
    let wrong = q.3[3..7].to_owned();
    if right.is_empty() {
        if roll < expert.3 {
            String::new()
        } else {
            wrong
        }
    } else if roll < expert.2 {
        right.clone()
    } else {
        wrong
    }
}

fn write_files(dir: &Path, questions: &[Question]) {
    let mut data = Vec::new();
    for a in 0..ARTICLES {
        let mut paragraphs: Vec<Value> = Vec::new();
        for q in questions.iter().filter(|q| q.0 == a) {
            let qa = if q.4.is_empty() {
                json!({"id": q.1, "question": q.2, "answers": [], "is_impossible": true})
            } else {
                let start = q.3.find(&q.4).unwrap();
                json!({"id": q.1, "question": q.2, "is_impossible": false,
                       "answers": [{"text": q.4, "answer_start": start}]})
            };
            match paragraphs.iter_mut().find(|p| p["context"] == q.3) {
                Some(p) => p["qas"].as_array_mut().unwrap().push(qa),
                None => paragraphs.push(json!({"context": q.3, "qas": [qa]})),
            }
        }
        data.push(json!({"title": format!("Article {a}"), "paragraphs": paragraphs}));
    }
    let file = json!({"version": "v2.0", "data": data});
    std::fs::write(dir.join("data.json"), file.to_string()).unwrap();
    let mut pool = String::new();
    for expert in EXPERTS {
        let answers: HashMap<&str, String> = questions
            .iter()
            .map(|q| (q.1.as_str(), answer_of(expert, q)))
            .collect();
        let predictions = dir.join(format!("{}.json", expert.0));
        std::fs::write(&predictions, serde_json::to_string(&answers).unwrap()).unwrap();
        pool.push_str(&format!(
            "[[expert]]\nid = \"{}\"\nbackend = \"replay\"\npredictions = \"{}\"\n\
             data = \"data.json\"\ncost = {}\n\n",
            expert.0,
            predictions.display(),
            expert.1
        ));
    }
    std::fs::write(dir.join("pool.toml"), pool).unwrap();
}

/// Runs `l2d args` in `dir`, asserting it succeeded.
fn l2d(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(L2D)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "l2d {args:?}: {stderr}");
    stderr
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_pool_on_squad_v2_data_labels_trains_evaluates_cross_validates_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let questions = questions();
    write_files(dir, &questions);

    // Labels: scored with the v2.0 rules, where "no answer" to an unanswerable question is right.
    l2d(
        dir,
        &[
            "label",
            "--pool",
            "pool.toml",
            "--data",
            "data.json",
            "--out",
            "labels.jsonl",
        ],
    );
    let text = std::fs::read_to_string(dir.join("labels.jsonl")).unwrap();
    let mut lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap());
    let header = lines.next().unwrap();
    assert_eq!(header["metric"], "v2.0");
    let records: Vec<Value> = lines.collect();
    assert_eq!(records.len(), questions.len());
    let mut abstentions = 0;
    for (r, q) in records.iter().zip(&questions) {
        assert_eq!(r["id"], q.1.as_str());
        for (label, expert) in r["experts"].as_array().unwrap().iter().zip(EXPERTS) {
            let answer = answer_of(expert, q);
            assert_eq!(label["answer"], answer.as_str(), "{} {}", q.1, expert.0);
            let right = answer == q.4;
            assert_eq!(
                label["em"],
                if right { 1.0 } else { 0.0 },
                "{} {}",
                q.1,
                expert.0
            );
            abstentions += usize::from(answer.is_empty());
        }
    }
    assert!(abstentions > questions.len() / 2, "{abstentions}");

    // The recommended policy, chosen on validation articles with no mode flag.
    let said = l2d(
        dir,
        &[
            "train",
            "--labels",
            "labels.jsonl",
            "--out",
            "policy.json",
            "--lambda",
            "0.02,0.1,0.3",
            "--epochs",
            "30",
        ],
    );
    assert!(said.contains("chose "), "{said}");
    let policy = json_file(&dir.join("policy.json"));
    let ids: Vec<&str> = policy["experts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["quick", "steady", "exact"]);

    l2d(
        dir,
        &[
            "eval",
            "--labels",
            "labels.jsonl",
            "--policy",
            "policy.json",
            "--json",
            "report.json",
        ],
    );
    let report = json_file(&dir.join("report.json"));
    for key in [
        "policy",
        "experts",
        "oracle",
        "random_mix",
        "question_type_rule",
    ] {
        assert!(report.get(key).is_some(), "{key} missing");
    }
    // `exact` is always right, "no answer" included: the oracle and it score 100 on test.
    assert_eq!(report["experts"]["exact"]["em"], 100.0);
    assert_eq!(report["oracle"]["em"], 100.0);
    assert!(!report["policy"]["curve"].as_array().unwrap().is_empty());

    l2d(
        dir,
        &[
            "cv",
            "--labels",
            "labels.jsonl",
            "--folds",
            "2",
            "--json",
            "cv.json",
            "--md",
            "cv.md",
        ],
    );
    let cv = json_file(&dir.join("cv.json"));
    assert_eq!(cv["folds"].as_array().unwrap().len(), 2);
    let markdown = std::fs::read_to_string(dir.join("cv.md")).unwrap();
    assert!(!markdown.contains("NaN"), "{markdown}");
    assert!(
        markdown.contains("no hand cascade in this pool"),
        "{markdown}"
    );

    // Served: every question is answered with what the answering expert recorded, "no answer"
    // included.
    let mut up = Proc::spawn(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        dir.join("pool.toml").to_str().unwrap(),
        "--policy",
        dir.join("policy.json").to_str().unwrap(),
    ]);
    let router = up.address_in("scheduler serving");
    // Its hint names no question of the default pool's data set.
    let hint = up.wait_for("l2d: try");
    assert!(
        hint.contains("--question") && !hint.contains("squad-v1.1"),
        "{hint}"
    );
    let mut client = RouterClient::connect(&format!("http://{router}"))
        .await
        .unwrap();
    let mut served_no_answer = 0;
    for q in &questions {
        let reply = client
            .ask(Ask::new(q.2.clone(), q.3.clone()).id(q.1.clone()))
            .await
            .unwrap_or_else(|s| panic!("{}: {s:?}", q.1));
        let expert = EXPERTS
            .iter()
            .find(|e| e.0 == reply.expert_id)
            .unwrap_or_else(|| panic!("{}: answered by {:?}", q.1, reply.expert_id));
        assert_eq!(reply.text, answer_of(*expert, q), "{}", q.1);
        served_no_answer += usize::from(reply.text.is_empty());
    }
    assert!(
        served_no_answer > 0,
        "no question was answered \"no answer\""
    );
}
