//! The decision log: one JSON line per routed query (what the policy scored, what was eligible,
//! what was chosen and with which probability, who answered, the answer given, what it cost),
//! for off-policy evaluation of a new policy (`l2d eval --from-log`) and for audits. Holds no
//! query text unless asked (`--decision-log-queries`, which evaluation from the log alone
//! needs).
//!
//! Durability: append-only. Each line is written whole with one `write` to the file (no user
//! space buffer), so a line the scheduler logged survives the process being killed; what a
//! machine crash can lose is bounded by [`Sync`]: by default the file is flushed to disk once a
//! second (`fdatasync` from a background thread, off the request path), and on close. When the
//! file would pass `max_bytes` it is rotated: `LOG` becomes `LOG.1` (`LOG.1` becomes `LOG.2`…,
//! keeping `keep` of them) and a new `LOG` starts. A crash can leave a torn last line;
//! [`read_log`] skips it with a warning.
//!
//! Concurrency: a std `Mutex` around the file, held only while one line is written (or the
//! file rotated).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::error_kind::{ErrorKind, Refusal};

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
    /// The answer returned ("" for no answer; absent when the request failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// With `--decision-log-queries`: the query and the answers seen before the decision, so
    /// that another policy can be evaluated from the log alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<LoggedQuery>,
    /// The reward reported for it later (`Router.ReportOutcome`, written as an outcome line and
    /// joined here by [`read_log`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    pub cost: f64,
    /// A candidate policy's decision on a request it did not decide (`cost` is what it would
    /// have paid); off-policy evaluation skips these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// A logged query: its text and the answers the request saw before its decision (probes, a
/// cascade's stages), by expert id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedQuery {
    pub question: String,
    pub context: String,
    #[serde(default)]
    pub observed: BTreeMap<String, String>,
}

/// The outcome reported for a request: its reward in [0, 1] and, when it was computed from gold
/// answers, the answer's token F1 against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedOutcome {
    pub request_id: String,
    pub reward: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct OutcomeLine {
    outcome: LoggedOutcome,
}

/// One line of the log.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Outcome(OutcomeLine),
    Decision(Box<LoggedDecision>),
}

/// The requests whose outcome may still be reported: the last `capacity` logged, for at most
/// `ttl` (bounded memory: a request id and its answer each).
pub struct Outcomes {
    window: quick_cache::sync::Cache<String, Arc<Pending>>,
    ttl: Duration,
}

struct Pending {
    answer: Option<String>,
    at: std::time::Instant,
    reported: AtomicBool,
}

impl Outcomes {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            window: quick_cache::sync::Cache::new(capacity.max(1)),
            ttl,
        }
    }

    /// Opens `request_id` to an outcome report, with the answer it got (`None`: it failed).
    pub fn expect(&self, request_id: &str, answer: Option<&str>) {
        self.window.insert(
            request_id.to_owned(),
            Arc::new(Pending {
                answer: answer.map(str::to_owned),
                at: std::time::Instant::now(),
                reported: AtomicBool::new(false),
            }),
        );
    }

    /// The outcome of `request_id` from a reward, or from gold answers (the official exact
    /// match of the answer it got; a failed request scores 0).
    pub fn report(
        &self,
        request_id: &str,
        reward: Option<f64>,
        gold: &[String],
    ) -> Result<LoggedOutcome, Refusal> {
        let invalid = |m: String| Refusal::new(ErrorKind::InvalidInput, m);
        if request_id.is_empty() {
            return Err(invalid("the request id is empty".into()));
        }
        match (reward, gold.is_empty()) {
            (Some(r), true) if !(0.0..=1.0).contains(&r) => {
                return Err(invalid(format!("the reward must be in [0, 1], got {r}")));
            }
            (Some(_), true) | (None, false) => {}
            _ => {
                return Err(invalid(
                    "give exactly one of a reward and gold answers".into(),
                ));
            }
        }
        let pending = self
            .window
            .get(request_id)
            .filter(|p| p.at.elapsed() <= self.ttl)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorKind::NotFound,
                    format!(
                        "no request {request_id:?} to report on: unknown, or out of the outcome \
                         window (the last {} requests, for {})",
                        self.window.capacity(),
                        humantime::format_duration(self.ttl)
                    ),
                )
            })?;
        if pending.reported.swap(true, Ordering::AcqRel) {
            return Err(Refusal::new(
                ErrorKind::Conflict,
                format!("the outcome of request {request_id:?} was reported already"),
            ));
        }
        let (reward, f1) = match reward {
            Some(r) => (r, None),
            None => {
                let references: Vec<&str> = gold.iter().map(String::as_str).collect();
                let answer = pending.answer.as_deref().unwrap_or("");
                let score = crate::core::metric::score(
                    answer,
                    &references,
                    crate::core::metric::MetricVersion::V1,
                );
                (score.exact, Some(score.f1))
            }
        };
        Ok(LoggedOutcome {
            request_id: request_id.to_owned(),
            reward,
            f1,
        })
    }
}

/// When the log is flushed to disk (beyond each line reaching the operating system at once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sync {
    /// After every line (a disk flush per query).
    Always,
    /// At most this long after a line was written, from a background thread.
    Every(Duration),
    /// Only on rotation and close.
    Never,
}

impl std::str::FromStr for Sync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Sync::Always),
            "never" => Ok(Sync::Never),
            other => match humantime::parse_duration(other) {
                Ok(d) if !d.is_zero() => Ok(Sync::Every(d)),
                _ => Err(format!(
                    "{other:?} is not always, never or an interval like 1s"
                )),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogOptions {
    /// Rotate before the file passes this size.
    pub max_bytes: u64,
    /// Rotated files kept (`LOG.1` … `LOG.keep`); older ones are deleted.
    pub keep: u32,
    pub sync: Sync,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            keep: 4,
            sync: Sync::Every(Duration::from_secs(1)),
        }
    }
}

struct Current {
    file: File,
    bytes: u64,
    /// Written since the last flush to disk.
    dirty: bool,
}

pub struct DecisionLog {
    path: PathBuf,
    options: LogOptions,
    current: Arc<Mutex<Current>>,
    stop: Arc<AtomicBool>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

impl DecisionLog {
    /// Appends to `path` (creating it if needed) with the default options.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_with(path, LogOptions::default())
    }

    pub fn open_with(path: &Path, options: LogOptions) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let bytes = file.metadata()?.len();
        let current = Arc::new(Mutex::new(Current {
            file,
            bytes,
            dirty: false,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let syncer = match options.sync {
            Sync::Every(every) => {
                let (current, stop) = (current.clone(), stop.clone());
                Some(
                    std::thread::Builder::new()
                        .name("decision-log-sync".into())
                        .spawn(move || {
                            while !stop.load(Ordering::Relaxed) {
                                std::thread::park_timeout(every);
                                sync_if_dirty(&current);
                            }
                        })?,
                )
            }
            _ => None,
        };
        Ok(Self {
            path: path.to_owned(),
            options,
            current,
            stop,
            syncer,
        })
    }

    pub fn record(&self, entry: &LoggedDecision) {
        if let Ok(line) = serde_json::to_vec(entry) {
            self.write_line(line);
        }
    }

    /// Appends an outcome line, `{"outcome": {...}}`.
    pub fn record_outcome(&self, outcome: &LoggedOutcome) {
        if let Ok(line) = serde_json::to_vec(&OutcomeLine {
            outcome: outcome.clone(),
        }) {
            self.write_line(line);
        }
    }

    fn write_line(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let full = current.bytes > 0 && current.bytes + line.len() as u64 > self.options.max_bytes;
        if full && let Err(e) = self.rotate(&mut current) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot rotate the decision log");
        }
        match current.file.write_all(&line) {
            Ok(()) => {
                current.bytes += line.len() as u64;
                current.dirty = true;
                if self.options.sync == Sync::Always {
                    flush(&mut current);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot write the decision log"),
        }
    }

    /// `LOG` → `LOG.1` → … → `LOG.keep` (the oldest dropped), and a new, empty `LOG`.
    fn rotate(&self, current: &mut Current) -> std::io::Result<()> {
        flush(current);
        let numbered = |n: u32| rotated(&self.path, n);
        if self.options.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.options.keep));
            for n in (1..self.options.keep).rev() {
                if numbered(n).exists() {
                    std::fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        current.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        current.bytes = 0;
        current.dirty = false;
        Ok(())
    }

    /// Flushes what was written to disk (as at shutdown).
    pub fn close(&self) {
        flush(&mut self.current.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(syncer) = self.syncer.take() {
            syncer.thread().unpark();
            let _ = syncer.join();
        }
        self.close();
    }
}

fn flush(current: &mut Current) {
    if current.dirty {
        if let Err(e) = current.file.sync_data() {
            tracing::warn!(error = %e, "cannot flush the decision log to disk");
        }
        current.dirty = false;
    }
}

/// Flushes to disk without holding the lock while the disk works (a duplicate handle of the
/// same file).
fn sync_if_dirty(current: &Mutex<Current>) {
    let handle = {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if !current.dirty {
            return;
        }
        current.dirty = false;
        current.file.try_clone()
    };
    if let Err(e) = handle.and_then(|f| f.sync_data()) {
        tracing::warn!(error = %e, "cannot flush the decision log to disk");
    }
}

/// The `n`th rotated file of the log at `path`: `LOG.n`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Every decision of the log at `path` and its rotated files, oldest first. A last line torn by
/// a crash (no final newline, not valid JSON) is skipped with a warning; any other line that is
/// not a decision is an error naming the file and line.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LoggedDecision>> {
    use anyhow::Context;
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_owned());
    let mut out = Vec::new();
    let mut rewards = std::collections::HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read decision log {}", file.display()))?;
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(line) {
                Ok(Line::Decision(entry)) => out.push(*entry),
                Ok(Line::Outcome(OutcomeLine { outcome })) => {
                    rewards.insert(outcome.request_id, outcome.reward);
                }
                Err(_) if i + 1 == lines.len() && !complete => {
                    tracing::warn!(
                        file = %file.display(),
                        line = i + 1,
                        "skipping the decision log's torn last line (the writer stopped mid-line)"
                    );
                    eprintln!(
                        "l2d: warning: decision log {}: line {} is torn (the writer stopped mid-line); skipped",
                        file.display(),
                        i + 1
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("decision log {}: line {}", file.display(), i + 1)
                    });
                }
            }
        }
    }
    for decision in &mut out {
        if let Some(&reward) = rewards.get(&decision.request_id) {
            decision.reward = Some(reward);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(n: usize) -> LoggedDecision {
        LoggedDecision {
            request_id: format!("r{n}"),
            query_id: Some(format!("q{n}")),
            policy_id: "p".into(),
            lambda: 0.1,
            eligible: vec!["a".into(), "b".into()],
            scores: BTreeMap::from([("a".into(), Some(0.2)), ("b".into(), None)]),
            greedy: "a".into(),
            chosen: "a".into(),
            propensity: 0.9,
            epsilon: 0.2,
            answered_by: Some("a".into()),
            answer: Some("Denver Broncos".into()),
            reward: None,
            query: None,
            cost: 1.0,
            shadow: false,
        }
    }

    #[test]
    fn the_log_rotates_by_size_and_is_read_back_in_order_without_the_dropped_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let line = serde_json::to_vec(&decision(0)).unwrap().len() as u64 + 1;
        let options = LogOptions {
            max_bytes: 3 * line + line / 2,
            keep: 2,
            sync: Sync::Never,
        };
        {
            let log = DecisionLog::open_with(&path, options).unwrap();
            for n in 0..10 {
                log.record(&decision(n));
            }
        }
        // Three lines a file; the fourth rotation dropped the oldest file (r0..r2).
        let sizes: Vec<u64> = [rotated(&path, 2), rotated(&path, 1), path.clone()]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect();
        assert_eq!(sizes, [3 * line, 3 * line, line]);
        assert!(!rotated(&path, 3).exists());
        let ids: Vec<String> = read_log(&path)
            .unwrap()
            .into_iter()
            .map(|d| d.request_id)
            .collect();
        let expected: Vec<String> = (3..10).map(|n| format!("r{n}")).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_damaged_line_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        {
            let log = DecisionLog::open_with(&path, LogOptions::default()).unwrap();
            log.record(&decision(0));
            log.record(&decision(1));
        }
        let whole = std::fs::read_to_string(&path).unwrap();
        // A crash mid-line: the last line is cut and has no newline.
        std::fs::write(&path, &whole[..whole.len() - 20]).unwrap();
        let read = read_log(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0], decision(0));
        // The same damage with lines after it is not a crash's: an error naming the line.
        std::fs::write(&path, format!("{}\n{whole}", &whole[..whole.len() / 2 - 5])).unwrap();
        let error = format!("{:#}", read_log(&path).unwrap_err());
        assert!(error.contains("decisions.jsonl: line 1"), "{error}");
    }

    #[test]
    fn outcomes_are_reported_once_within_the_window_and_joined_on_reading() {
        let outcomes = Outcomes::new(2, Duration::from_secs(3600));
        outcomes.expect("r0", Some("the Denver Broncos"));
        outcomes.expect("r1", None);
        let gold = ["Denver Broncos".to_owned(), "Broncos".to_owned()];
        let r0 = outcomes.report("r0", None, &gold).unwrap();
        assert_eq!((r0.reward, r0.f1), (1.0, Some(1.0)));
        // A failed request scores 0 against gold answers.
        assert_eq!(outcomes.report("r1", None, &gold).unwrap().reward, 0.0);
        let code = |r: Result<LoggedOutcome, Refusal>| r.unwrap_err().kind;
        assert_eq!(
            code(outcomes.report("r0", Some(1.0), &[])),
            ErrorKind::Conflict
        );
        assert_eq!(
            code(outcomes.report("nope", Some(1.0), &[])),
            ErrorKind::NotFound
        );
        for (reward, gold) in [(Some(1.5), &[][..]), (None, &[]), (Some(1.0), &gold[..])] {
            outcomes.expect("r2", Some("x"));
            assert_eq!(
                code(outcomes.report("r2", reward, gold)),
                ErrorKind::InvalidInput
            );
        }
        // The window keeps the last two: r0 and r1 are out once r2 and r3 are in.
        outcomes.expect("r3", Some("x"));
        assert_eq!(
            code(outcomes.report("r0", Some(1.0), &[])),
            ErrorKind::NotFound
        );
        // Too old is out too.
        let stale = Outcomes::new(8, Duration::ZERO);
        stale.expect("r", Some("x"));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(code(stale.report("r", Some(1.0), &[])), ErrorKind::NotFound);

        // On reading, the reward is the decision's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        {
            let log = DecisionLog::open(&path).unwrap();
            log.record(&decision(0));
            log.record(&decision(1));
            log.record_outcome(&r0);
        }
        let read = read_log(&path).unwrap();
        assert_eq!((read[0].reward, read[1].reward), (Some(1.0), None));
    }

    #[test]
    fn sync_policies_are_read_from_the_flag() {
        assert_eq!("always".parse(), Ok(Sync::Always));
        assert_eq!("never".parse(), Ok(Sync::Never));
        assert_eq!("250ms".parse(), Ok(Sync::Every(Duration::from_millis(250))));
        assert!("0s".parse::<Sync>().is_err());
        assert!("sometimes".parse::<Sync>().is_err());
    }
}
