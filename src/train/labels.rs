//! Labels: what every expert of a pool answered to every question of a data set, scored with
//! the official metric, with the measured latency and the declared cost.
//!
//! File format: JSON Lines. The first line is the header ([`LabelHeader`]); each further line is
//! one question ([`LabelRecord`]), carrying the featurizer's inputs (question and context) and,
//! per expert in header order, the answer, EM, F1, latency and cost.

use crate::cluster;
use crate::core::metric::{MetricVersion, score};
use crate::pool_file::PoolFile;
use crate::report::{ask_every_question, progress_bar};
use crate::squad::Dataset;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use tonic::transport::Endpoint;

pub const LABELS_FORMAT: &str = "l2d-labels/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelHeader {
    pub format: String,
    /// The data set labelled (as given on the command line).
    pub data: String,
    /// "v1.1" or "v2.0": which official scoring rules produced EM and F1.
    pub metric: String,
    pub experts: Vec<crate::core::learned::Agent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertLabel {
    pub expert: String,
    /// `None` when the expert returned a status instead of an answer (scored 0).
    pub answer: Option<String>,
    pub em: f64,
    pub f1: f64,
    pub latency_us: u64,
    pub cost: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    pub id: String,
    pub title: String,
    pub question: String,
    pub context: String,
    pub experts: Vec<ExpertLabel>,
}

impl ExpertLabel {
    /// The loss a policy trained with `kind` counts for this answer: `1 − EM` or `1 − F1`.
    pub fn loss(&self, kind: crate::core::learned::LossKind) -> f64 {
        1.0 - match kind {
            crate::core::learned::LossKind::Em => self.em,
            crate::core::learned::LossKind::F1 => self.f1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub header: LabelHeader,
    pub records: Vec<LabelRecord>,
}

impl Labels {
    /// The questions of `articles` (by title), in file order.
    pub fn in_articles(&self, articles: &[String]) -> Vec<&LabelRecord> {
        let set: std::collections::HashSet<&str> = articles.iter().map(String::as_str).collect();
        self.records
            .iter()
            .filter(|r| set.contains(r.title.as_str()))
            .collect()
    }
}

/// What training needs of a header: at least one expert, ids an expert may have (as in a pool
/// file), each once, and a positive finite cost each (the price a policy weighs an answer
/// against; a policy file with any other is refused).
fn check_header(header: &LabelHeader) -> Result<(), String> {
    if header.experts.is_empty() {
        return Err("the header names no experts".into());
    }
    for (k, agent) in header.experts.iter().enumerate() {
        crate::pool_file::check_expert_id(&agent.id)
            .map_err(|m| format!("expert id {:?}: {m}", agent.id))?;
        if header.experts[..k].iter().any(|a| a.id == agent.id) {
            return Err(format!("expert {:?} is named twice", agent.id));
        }
        if !(agent.cost.is_finite() && agent.cost > 0.0) {
            return Err(format!(
                "expert {:?} has cost {}: a cost must be a positive finite number",
                agent.id, agent.cost
            ));
        }
    }
    Ok(())
}

/// EM and F1 are scores between 0 and 1: anything else would train a policy on a loss outside
/// the surrogate's range without a word.
fn check_scores(record: &LabelRecord) -> Result<(), String> {
    for label in &record.experts {
        for (name, value) in [("em", label.em), ("f1", label.f1)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!(
                    "question {:?}, expert {:?}: {name} is {value}, not between 0 and 1",
                    record.id, label.expert
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct LabelOptions {
    pub concurrency: usize,
    pub limit: Option<usize>,
    pub progress: bool,
    /// Label only the questions of these articles (all when `None`).
    pub articles: Option<std::collections::HashSet<String>>,
}

/// Runs every expert of `pool` (spawned in-process where the pool file says so) on every
/// question of `dataset` through gRPC.
pub async fn label(
    pool: &PoolFile,
    dataset: &Dataset,
    data_name: &str,
    options: &LabelOptions,
) -> anyhow::Result<Labels> {
    let version = dataset.metric_version();
    let picked: Vec<_> = dataset
        .questions()
        .filter(|(a, _, _)| {
            options
                .articles
                .as_ref()
                .is_none_or(|set| set.contains(&a.title))
        })
        .take(options.limit.unwrap_or(usize::MAX))
        .collect();
    let questions = Arc::new(
        picked
            .iter()
            .map(|(_, p, q)| (q.id.clone(), q.question.clone(), p.context.clone()))
            .collect::<Vec<_>>(),
    );
    let local = cluster::spawn_local_experts(pool).await?;
    let mut per_expert = Vec::new();
    let mut experts = Vec::new();
    let result: anyhow::Result<()> = async {
        for spec in &pool.experts {
            let address = cluster::expert_addresses(spec, &local)
                .into_iter()
                .next()
                .with_context(|| {
                    format!(
                        "expert {:?} has no in-process replica or address to label with",
                        spec.id
                    )
                })?;
            let channel = Endpoint::from_shared(format!("http://{address}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot reach expert {:?} at {address}", spec.id))?;
            let bar = progress_bar(options.progress, questions.len() as u64, &spec.id);
            per_expert.push(
                ask_every_question(channel, questions.clone(), options.concurrency.max(1), &bar)
                    .await?,
            );
            bar.finish_and_clear();
            experts.push(crate::core::learned::Agent {
                id: spec.id.clone(),
                cost: spec.cost,
            });
        }
        Ok(())
    }
    .await;
    local.shutdown().await?;
    result?;
    let records = picked
        .iter()
        .enumerate()
        .map(|(i, (article, paragraph, q))| {
            let references: Vec<&str> = q.answers.iter().map(|a| a.text.as_str()).collect();
            let labels = experts
                .iter()
                .zip(&per_expert)
                .map(|(agent, calls)| {
                    let call = &calls[i];
                    let (answer, error) = match &call.result {
                        Ok(a) => (Some(a.text.clone()), None),
                        Err(code) => (None, Some((*code).to_owned())),
                    };
                    let s = answer.as_deref().map_or(
                        crate::core::metric::Score {
                            exact: 0.0,
                            f1: 0.0,
                        },
                        |a| score(a, &references, version),
                    );
                    ExpertLabel {
                        expert: agent.id.clone(),
                        answer,
                        em: s.exact,
                        f1: s.f1,
                        latency_us: call.latency_us,
                        cost: agent.cost,
                        error,
                    }
                })
                .collect();
            LabelRecord {
                id: q.id.clone(),
                title: article.title.clone(),
                question: q.question.clone(),
                context: paragraph.context.clone(),
                experts: labels,
            }
        })
        .collect();
    Ok(Labels {
        header: LabelHeader {
            format: LABELS_FORMAT.into(),
            data: data_name.into(),
            metric: match version {
                MetricVersion::V1 => "v1.1".into(),
                MetricVersion::V2 => "v2.0".into(),
            },
            experts,
        },
        records,
    })
}

impl Labels {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer(&mut out, &self.header)?;
        out.write_all(b"\n")?;
        for record in &self.records {
            serde_json::to_writer(&mut out, record)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read labels file {}", path.display()))?;
        let mut lines = std::io::BufReader::new(file).lines();
        let where_ = |n: usize| format!("labels file {}: line {n}", path.display());
        let header: LabelHeader = match lines.next() {
            Some(line) => serde_json::from_str(&line?).with_context(|| where_(1))?,
            None => anyhow::bail!("labels file {} is empty", path.display()),
        };
        anyhow::ensure!(
            header.format == LABELS_FORMAT,
            "labels file {}: format {:?} is not {LABELS_FORMAT:?}",
            path.display(),
            header.format
        );
        check_header(&header).map_err(|m| anyhow::anyhow!("{}: {m}", where_(1)))?;
        let mut records = Vec::new();
        for (i, line) in lines.enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let record: LabelRecord = serde_json::from_str(&line).with_context(|| where_(i + 2))?;
            let same_experts = record.experts.len() == header.experts.len()
                && record
                    .experts
                    .iter()
                    .zip(&header.experts)
                    .all(|(l, a)| l.expert == a.id);
            anyhow::ensure!(
                same_experts,
                "{}: the experts differ from the header's",
                where_(i + 2)
            );
            check_scores(&record).map_err(|m| anyhow::anyhow!("{}: {m}", where_(i + 2)))?;
            records.push(record);
        }
        Ok(Self { header, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"format":"l2d-labels/1","data":"d.json","metric":"v2.0","experts":[{"id":"a","cost":3.0},{"id":"b","cost":7.0}]}"#;

    fn record(em_a: f64) -> String {
        format!(
            r#"{{"id":"q1","title":"T","question":"Who?","context":"Ann.","experts":[{{"expert":"a","answer":"Ann","em":{em_a},"f1":{em_a},"latency_us":3,"cost":3.0}},{{"expert":"b","answer":"","em":0,"f1":0,"latency_us":5,"cost":7.0}}]}}"#
        )
    }

    /// Reads a labels file of these lines; the error's text when it is refused.
    fn read(lines: &[&str]) -> Result<Labels, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        Labels::read(&path).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn a_well_formed_file_reads() {
        let labels = read(&[HEADER, &record(1.0)]).unwrap();
        assert_eq!(labels.header.experts.len(), 2);
        assert_eq!(labels.records[0].experts[0].em, 1.0);
    }

    #[test]
    fn a_header_a_policy_could_not_price_is_refused_at_its_line() {
        for (header, says) in [
            (HEADER.replace("3.0},", "0.0},"), r#"expert "a" has cost 0"#),
            (
                HEADER.replace("3.0},", "-3.0},"),
                r#"expert "a" has cost -3"#,
            ),
            (
                HEADER.replace(r#""b""#, r#""a""#),
                r#"expert "a" is named twice"#,
            ),
            (
                HEADER.replace(r#""b""#, r#""b c""#),
                "has the character ' '",
            ),
            (
                HEADER.replace(r#"[{"id":"a","cost":3.0},{"id":"b","cost":7.0}]"#, "[]"),
                "names no experts",
            ),
        ] {
            let err = read(&[&header]).unwrap_err();
            assert!(err.contains("line 1") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn a_score_outside_zero_to_one_is_refused_at_its_line() {
        let err = read(&[HEADER, &record(1.0), &record(2.0)]).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains(r#"expert "a": em is 2"#), "{err}");
        let err = read(&[HEADER, &record(-0.5)]).unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("em is -0.5"),
            "{err}"
        );
    }
}
