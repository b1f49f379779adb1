//! The decision log: one JSON line per routed query (what the policy scored, what was eligible,
//! what was chosen and with which probability, who answered, what it cost), for off-policy
//! evaluation of a new policy (`l2d eval --from-log`) and for audits. Holds no query text.
//!
//! Concurrency: a std `Mutex` around a line-buffered file, held only while one line is written.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedDecision {
    pub request_id: String,
    /// The query's id, when the caller sent one (how rewards are joined later).
    pub query_id: Option<String>,
    pub policy_id: String,
    pub lambda: f64,
    /// Experts the decision could choose from, best-scored first.
    pub eligible: Vec<String>,
    /// The policy's score per expert (lower is better).
    pub scores: BTreeMap<String, Option<f64>>,
    /// The policy's own choice.
    pub greedy: String,
    /// The expert tried first (differs from `greedy` when exploration drew another).
    pub chosen: String,
    /// Probability with which `chosen` was chosen.
    pub propensity: f64,
    pub epsilon: f64,
    /// The expert whose answer was returned (`None` when the request failed).
    pub answered_by: Option<String>,
    pub cost: f64,
    /// A candidate policy's decision on a request it did not decide (`cost` is what it would
    /// have paid); off-policy evaluation skips these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

pub struct DecisionLog {
    out: Mutex<LineWriter<File>>,
}

impl DecisionLog {
    /// Appends to `path`, creating it if needed.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: Mutex::new(LineWriter::new(file)),
        })
    }

    pub fn record(&self, entry: &LoggedDecision) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(&line) {
            tracing::warn!(error = %e, "cannot write the decision log");
        }
    }
}
