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

/// Two uniform numbers in [0, 1) from a request number (SplitMix64): exploration draws that are
/// reproducible from the log.
pub fn uniform_pair(seed: u64, request: u64) -> (f64, f64) {
    let mut state = seed ^ request.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    };
    (next(), next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough_and_reproducible() {
        assert_eq!(uniform_pair(1, 7), uniform_pair(1, 7));
        let n = 100_000u64;
        let below: usize = (0..n).filter(|&i| uniform_pair(3, i).0 < 0.25).count();
        assert!((below as f64 / n as f64 - 0.25).abs() < 0.01);
        assert!((0..1000).all(|i| {
            let (u, v) = uniform_pair(9, i);
            (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v)
        }));
    }
}
