//! The decision log: one JSON line per routed query (what the policy scored, what was eligible,
//! what was chosen and with which probability, who answered, the answer given, what it cost),
//! for off-policy evaluation of a new policy (`l2d eval --from-log`) and for audits. Holds no
//! query text unless asked (`--decision-log-queries`, which evaluation from the log alone
//! needs).
//!
//! Durability: append-only. Each line is written whole with one `write` to the file (no user
//! space buffer), so a line the scheduler logged survives the process being killed; what a
//! machine crash can lose is bounded by [`Sync`]: by default the file is flushed to disk once a
//! second (`fdatasync` from a background thread, off the request path), and on close, which
//! waits for a flush under way. When the file would pass `max_bytes` it is rotated with one
//! atomic rename: `LOG` becomes `LOG.N`, N one more than the newest rotated file (numbers grow
//! with time, so no older file is ever renamed), the directory is flushed, a new `LOG` starts,
//! and rotated files beyond the newest `keep` are deleted. A rotation that fails (a full disk)
//! is tried again after [`ROTATION_RETRY`], not on every line. A crash can leave a torn last
//! line: [`read_log`] skips it with a warning, and reopening the log cuts it off before
//! appending, so that it never ends up mid-file.
//!
//! Concurrency: a std `Mutex` around the file, held only while one line is written (or the
//! file rotated).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The request's number in the outcome window, which its outcome line repeats: the join
    /// key when a client sent the same request id with requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
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
    /// The decision's [`LoggedDecision::sequence`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
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

/// The longest request id an outcome may name (the ids the scheduler accepts or makes are
/// shorter).
pub const MAX_REQUEST_ID: usize = 64;

/// The requests whose outcome may still be reported: the last `capacity` answered, each for at
/// most `ttl` (bounded memory: a request id and its answer each). A request id a client sent
/// twice names its latest request.
pub struct Outcomes {
    window: Mutex<Window>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Window {
    /// Requests in the order they were opened, by sequence number (an id opened again leaves
    /// its older entry here, superseded).
    order: VecDeque<(u64, String)>,
    pending: HashMap<String, Pending>,
    next: u64,
}

struct Pending {
    sequence: u64,
    answer: Option<String>,
    at: Instant,
    reported: bool,
}

impl Window {
    /// Drops the oldest entries beyond `capacity` and those older than `ttl`.
    fn evict(&mut self, capacity: usize, ttl: Duration, now: Instant) {
        while let Some((sequence, id)) = self.order.front() {
            let live = self.pending.get(id).filter(|p| p.sequence == *sequence);
            let expired = live.is_none_or(|p| now.duration_since(p.at) > ttl);
            if !(expired || self.order.len() > capacity) {
                break;
            }
            if live.is_some() {
                self.pending.remove(id);
            }
            self.order.pop_front();
        }
    }
}

impl Outcomes {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            window: Mutex::new(Window::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens `request_id` to an outcome report, with the answer it got (`None`: it failed);
    /// returns its sequence number, for its decision's log line.
    pub fn expect(&self, request_id: &str, answer: Option<&str>) -> u64 {
        let now = Instant::now();
        let mut window = self.window();
        let sequence = window.next;
        window.next += 1;
        window.pending.insert(
            request_id.to_owned(),
            Pending {
                sequence,
                answer: answer.map(str::to_owned),
                at: now,
                reported: false,
            },
        );
        window.order.push_back((sequence, request_id.to_owned()));
        window.evict(self.capacity, self.ttl, now);
        sequence
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
        if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID {
            return Err(invalid(format!(
                "the request id must have 1 to {MAX_REQUEST_ID} bytes, got {}",
                request_id.len()
            )));
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
        let answer = {
            let mut window = self.window();
            window.evict(self.capacity, self.ttl, Instant::now());
            let pending = window.pending.get_mut(request_id).ok_or_else(|| {
                Refusal::new(
                    ErrorKind::NotFound,
                    format!(
                        "no request {request_id:?} to report on: unknown, or out of the outcome \
                         window (the last {} requests, for {})",
                        self.capacity,
                        humantime::format_duration(self.ttl)
                    ),
                )
            })?;
            if pending.reported {
                return Err(Refusal::new(
                    ErrorKind::Conflict,
                    format!("the outcome of request {request_id:?} was reported already"),
                ));
            }
            pending.reported = true;
            (pending.answer.clone(), pending.sequence)
        };
        let (answer, sequence) = answer;
        let (reward, f1) = match reward {
            Some(r) => (r, None),
            None => {
                let references: Vec<&str> = gold.iter().map(String::as_str).collect();
                let score = crate::core::metric::score(
                    answer.as_deref().unwrap_or(""),
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
            sequence: Some(sequence),
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
    /// Rotated files kept (the newest `keep`); older ones are deleted.
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

/// How long after a failed rotation the next is tried (the file grows past its size meanwhile).
pub const ROTATION_RETRY: Duration = Duration::from_secs(10);

struct Current {
    file: File,
    bytes: u64,
    /// Written since the last flush to disk.
    dirty: bool,
    /// The number of the newest rotated file (0: none).
    newest: u64,
    /// After a failed rotation: not before this.
    retry_rotation: Option<Instant>,
}

struct Shared {
    current: Mutex<Current>,
    /// Held while the file is flushed to disk, so that [`DecisionLog::close`] waits for a flush
    /// the background thread has under way.
    flushing: Mutex<()>,
    stop: AtomicBool,
}

impl Shared {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Flushes to disk what was written, without holding the file's lock while the disk works
    /// (a duplicate handle of the same file). A failed flush leaves the data marked unflushed,
    /// to be tried again.
    fn flush(&self) {
        let _flushing = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        let handle = {
            let mut current = self.current();
            if !current.dirty {
                return;
            }
            current.dirty = false;
            current.file.try_clone()
        };
        if let Err(e) = handle.and_then(|f| f.sync_data()) {
            tracing::warn!(error = %e, "cannot flush the decision log to disk");
            self.current().dirty = true;
        }
    }
}

pub struct DecisionLog {
    path: PathBuf,
    options: LogOptions,
    shared: Arc<Shared>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

impl DecisionLog {
    /// Appends to `path` (creating it if needed) with the default options.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_with(path, LogOptions::default())
    }

    /// Appends to `path`, creating it if needed; a torn last line a crash left is cut off first
    /// (with a warning), so that the next line starts on a line of its own.
    pub fn open_with(path: &Path, options: LogOptions) -> std::io::Result<Self> {
        let cut = cut_torn_tail(path)?;
        if cut > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = cut,
                "the decision log ended in a torn line (the writer stopped mid-line); cut it off"
            );
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let bytes = file.metadata()?.len();
        let newest = rotated_files(path)?.last().map_or(0, |(n, _)| *n);
        let shared = Arc::new(Shared {
            current: Mutex::new(Current {
                file,
                bytes,
                dirty: false,
                newest,
                retry_rotation: None,
            }),
            flushing: Mutex::new(()),
            stop: AtomicBool::new(false),
        });
        let syncer = match options.sync {
            Sync::Every(every) => {
                let shared = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("decision-log-sync".into())
                        .spawn(move || {
                            while !shared.stop.load(Ordering::Relaxed) {
                                std::thread::park_timeout(every);
                                shared.flush();
                            }
                        })?,
                )
            }
            _ => None,
        };
        Ok(Self {
            path: path.to_owned(),
            options,
            shared,
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
        let mut current = self.shared.current();
        let full = current.bytes > 0 && current.bytes + line.len() as u64 > self.options.max_bytes;
        let due = current.retry_rotation.is_none_or(|at| Instant::now() >= at);
        if full && due {
            match self.rotate(&mut current) {
                Ok(()) => current.retry_rotation = None,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        path = %self.path.display(),
                        retry_in = ?ROTATION_RETRY,
                        "cannot rotate the decision log; appending to it meanwhile"
                    );
                    current.retry_rotation = Some(Instant::now() + ROTATION_RETRY);
                }
            }
        }
        match current.file.write_all(&line) {
            Ok(()) => {
                current.bytes += line.len() as u64;
                current.dirty = true;
                if self.options.sync == Sync::Always {
                    // Flushed with the file's lock released, so that other requests write
                    // meanwhile (and one flush may carry several of their lines).
                    drop(current);
                    self.shared.flush();
                }
            }
            Err(e) => {
                // A line written in part (a full disk) would end up mid-file, where it makes
                // the log unreadable: cut it off.
                let cut = current.bytes;
                if let Err(e) = current.file.set_len(cut) {
                    tracing::warn!(error = %e, "cannot cut a line written in part from the decision log");
                }
                tracing::warn!(error = %e, "cannot write the decision log");
            }
        }
    }

    /// `LOG` → `LOG.N` with N one more than the newest rotated file (one rename, so a failure
    /// leaves every file as it was), a new empty `LOG`, the directory flushed, and rotated
    /// files beyond the newest `keep` deleted.
    fn rotate(&self, current: &mut Current) -> std::io::Result<()> {
        sync_locked(current);
        let number = current.newest + 1;
        let to = rotated(&self.path, number);
        std::fs::rename(&self.path, &to)?;
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => current.file = file,
            Err(e) => {
                // Put the file back, so that `LOG` stays the file written to.
                std::fs::rename(&to, &self.path)?;
                return Err(e);
            }
        }
        current.newest = number;
        current.bytes = 0;
        current.dirty = false;
        sync_directory(&self.path)?;
        let oldest_kept = number.saturating_sub(u64::from(self.options.keep)) + 1;
        for (n, file) in rotated_files(&self.path)? {
            if n < oldest_kept
                && let Err(e) = std::fs::remove_file(&file)
            {
                tracing::warn!(error = %e, file = %file.display(), "cannot delete an old decision log");
            }
        }
        Ok(())
    }

    /// Flushes what was written to disk (as at shutdown), after any flush under way.
    pub fn close(&self) {
        self.shared.flush();
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(syncer) = self.syncer.take() {
            syncer.thread().unpark();
            let _ = syncer.join();
        }
        self.close();
    }
}

/// Flushes to disk with the file's lock held (before a rotation).
fn sync_locked(current: &mut Current) {
    if current.dirty {
        match current.file.sync_data() {
            Ok(()) => current.dirty = false,
            Err(e) => tracing::warn!(error = %e, "cannot flush the decision log to disk"),
        }
    }
}

/// Flushes the directory holding `path`, so that a rename or a new file in it survives a crash.
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Cuts the log at `path` after its last newline when it ends in a torn line, and returns how
/// many bytes were cut (0 when the file is whole or absent); a whole line that lost only its
/// newline gets it back instead.
fn cut_torn_tail(path: &Path) -> std::io::Result<u64> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end == len {
        return Ok(0);
    }
    // A whole line that lost only its newline is kept and ended.
    let mut tail = vec![0u8; (len - end) as usize];
    file.seek(SeekFrom::Start(end))?;
    file.read_exact(&mut tail)?;
    if std::str::from_utf8(&tail).is_ok_and(|t| serde_json::from_str::<Line>(t).is_ok()) {
        file.seek(SeekFrom::End(0))?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        return Ok(0);
    }
    file.set_len(end)?;
    file.sync_all()?;
    Ok(len - end)
}

/// The `n`th rotated file of the log at `path`: `LOG.n` (higher is newer).
pub fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The rotated files of the log at `path`, oldest first, with their numbers.
pub fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let number = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            files.push((n, entry.path()));
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// How many times [`read_log`] starts again when the log rotated while it was read.
const READ_ATTEMPTS: usize = 8;

/// Every decision of the log at `path` and its rotated files, oldest first, with the rewards
/// reported for them: an outcome line is joined to the latest decision before it with its
/// request id (shadow decisions aside). A last line torn by a crash (no final newline, not
/// valid JSON) is skipped with a warning; any other line that is not a decision or an outcome
/// (bad JSON, bad UTF-8) is an error naming the file and line. A log rotating while it is read
/// is read again, so that no file is missed or read twice.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LoggedDecision>> {
    use anyhow::Context;
    for _ in 0..READ_ATTEMPTS {
        let before = rotated_files(path)
            .with_context(|| format!("cannot list the decision logs beside {}", path.display()))?;
        let mut lines = Vec::new();
        let mut vanished = None;
        for file in before.iter().map(|(_, f)| f.as_path()).chain([path]) {
            match std::fs::read(file) {
                Ok(bytes) => parse_lines(file, &bytes, &mut lines)?,
                // Deleted or renamed by a rotation since the listing: read again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    vanished = Some((file, e));
                    break;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read decision log {}", file.display()));
                }
            }
        }
        let after = rotated_files(path)?;
        if after.last() == before.last() {
            match vanished {
                None => return Ok(join_outcomes(lines)),
                // No rotation took it: the log is not there.
                Some((file, e)) if file == path => {
                    return Err(e)
                        .with_context(|| format!("cannot read decision log {}", file.display()));
                }
                Some(_) => {}
            }
        }
    }
    anyhow::bail!(
        "decision log {}: it rotated each of {READ_ATTEMPTS} times it was read; try again",
        path.display()
    )
}

fn parse_lines(file: &Path, bytes: &[u8], out: &mut Vec<Line>) -> anyhow::Result<()> {
    use anyhow::Context;
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty piece after a final newline.
    let count = lines.len() - usize::from(complete);
    for (i, line) in lines.iter().take(count).enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(anyhow::Error::from)
            .and_then(|text| {
                serde_json::from_str::<Line>(text).map_err(|_| {
                    // Say what a decision line lacks (the untagged enum's own error does not).
                    let why = serde_json::from_str::<LoggedDecision>(text)
                        .err()
                        .map_or_else(String::new, |e| format!(": {e}"));
                    anyhow::anyhow!("neither a decision nor an outcome{why}")
                })
            });
        match parsed {
            Ok(line) => out.push(line),
            Err(_) if i + 1 == count && !complete => {
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
                return Err(e)
                    .with_context(|| format!("decision log {}: line {}", file.display(), i + 1));
            }
        }
    }
    Ok(())
}

fn join_outcomes(lines: Vec<Line>) -> Vec<LoggedDecision> {
    let mut out: Vec<LoggedDecision> = Vec::with_capacity(lines.len());
    // The latest served decision so far by request id, and by request id and sequence.
    let mut latest: HashMap<String, usize> = HashMap::new();
    let mut numbered: HashMap<(String, u64), usize> = HashMap::new();
    for line in lines {
        match line {
            Line::Decision(decision) => {
                if !decision.shadow {
                    latest.insert(decision.request_id.clone(), out.len());
                    if let Some(n) = decision.sequence {
                        numbered.insert((decision.request_id.clone(), n), out.len());
                    }
                }
                out.push(*decision);
            }
            Line::Outcome(OutcomeLine { outcome }) => {
                // By sequence number; else (a decision logged without one) by id alone.
                let by_id = latest
                    .get(&outcome.request_id)
                    .filter(|&&i| out[i].sequence.is_none());
                let found = match outcome.sequence {
                    Some(n) => numbered.get(&(outcome.request_id, n)).or(by_id),
                    None => latest.get(&outcome.request_id),
                };
                // An outcome whose decision rotated out of the kept files has nothing to join.
                if let Some(&i) = found
                    && out[i].reward.is_none()
                {
                    out[i].reward = Some(outcome.reward);
                }
            }
        }
    }
    out
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
            sequence: None,
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
        // Three lines a file, numbered as rotated; the third rotation dropped the oldest file
        // (r0..r2).
        let sizes: Vec<u64> = [rotated(&path, 2), rotated(&path, 3), path.clone()]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect();
        assert_eq!(sizes, [3 * line, 3 * line, line]);
        assert!(!rotated(&path, 1).exists() && !rotated(&path, 4).exists());
        let ids = |path: &Path| -> Vec<String> {
            read_log(path)
                .unwrap()
                .into_iter()
                .map(|d| d.request_id)
                .collect()
        };
        let expected: Vec<String> = (3..10).map(|n| format!("r{n}")).collect();
        assert_eq!(ids(&path), expected);
        // Reopened, the log goes on numbering after its newest rotated file.
        {
            let log = DecisionLog::open_with(&path, options).unwrap();
            for n in 10..13 {
                log.record(&decision(n));
            }
        }
        assert!(rotated(&path, 4).exists() && !rotated(&path, 2).exists());
        let expected: Vec<String> = (6..13).map(|n| format!("r{n}")).collect();
        assert_eq!(ids(&path), expected);
    }

    #[test]
    fn a_failed_rotation_keeps_every_line_and_is_not_tried_on_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let line = serde_json::to_vec(&decision(0)).unwrap().len() as u64 + 1;
        let options = LogOptions {
            max_bytes: line,
            keep: 2,
            sync: Sync::Never,
        };
        let log = DecisionLog::open_with(&path, options).unwrap();
        log.record(&decision(0));
        // The rotated file's name is taken by a directory: the rename fails.
        std::fs::create_dir(rotated(&path, 1)).unwrap();
        std::fs::write(rotated(&path, 1).join("x"), "x").unwrap();
        log.record(&decision(1));
        assert!(log.shared.current().retry_rotation.is_some());
        // Possible again, but not tried again before the retry interval.
        std::fs::remove_dir_all(rotated(&path, 1)).unwrap();
        log.record(&decision(2));
        assert!(!rotated(&path, 1).exists());
        drop(log);
        let kept: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<LoggedDecision>(l)
                    .unwrap()
                    .request_id
            })
            .collect();
        assert_eq!(kept, ["r0", "r1", "r2"]);
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
        std::fs::write(&path, "{\"request_id\":\"r\"}\n").unwrap();
        let error = format!("{:#}", read_log(&path).unwrap_err());
        assert!(error.contains("missing field"), "{error}");
        // Bad UTF-8 mid-file is damage too, reported, not a failure to read the file.
        std::fs::write(&path, [&b"\xff\xfe\n"[..], whole.as_bytes()].concat()).unwrap();
        let error = format!("{:#}", read_log(&path).unwrap_err());
        assert!(error.contains("decisions.jsonl: line 1"), "{error}");
    }

    #[test]
    fn reopening_after_a_crash_cuts_the_torn_line_so_later_lines_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        {
            let log = DecisionLog::open(&path).unwrap();
            log.record(&decision(0));
            log.record(&decision(1));
        }
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 20]).unwrap();
        {
            let log = DecisionLog::open(&path).unwrap();
            log.record(&decision(2));
        }
        let ids: Vec<String> = read_log(&path)
            .unwrap()
            .into_iter()
            .map(|d| d.request_id)
            .collect();
        assert_eq!(ids, ["r0", "r2"]);
        // A whole file, and one with no newline at all, are handled too.
        assert_eq!(cut_torn_tail(&path).unwrap(), 0);
        std::fs::write(&path, "{\"torn").unwrap();
        assert_eq!(cut_torn_tail(&path).unwrap(), 6);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        // A whole line without its newline is kept, and ended.
        let line = serde_json::to_string(&decision(5)).unwrap();
        std::fs::write(&path, &line).unwrap();
        assert_eq!(cut_torn_tail(&path).unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{line}\n"));
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
        // The window keeps the last two: r0 and r1 are out once r2 and r3 are in, however
        // often they were looked up.
        outcomes.expect("r3", Some("x"));
        assert_eq!(
            code(outcomes.report("r0", Some(1.0), &[])),
            ErrorKind::NotFound
        );
        let window = Outcomes::new(2, Duration::from_secs(3600));
        window.expect("a", None);
        window.expect("b", None);
        assert!(window.report("a", Some(1.0), &[]).is_ok());
        for _ in 0..3 {
            assert_eq!(
                code(window.report("a", Some(1.0), &[])),
                ErrorKind::Conflict
            );
        }
        window.expect("c", None);
        assert_eq!(
            code(window.report("a", Some(1.0), &[])),
            ErrorKind::NotFound
        );
        // A request id sent again names the latest request: its outcome can be reported (once
        // more), and is scored on its own answer. It is a request of the last two like any
        // other, so b, now third from last, is out.
        assert!(window.report("c", Some(0.0), &[]).is_ok());
        window.expect("c", Some("Broncos"));
        assert_eq!(window.report("c", None, &gold).unwrap().reward, 1.0);
        assert_eq!(
            code(window.report("b", Some(0.0), &[])),
            ErrorKind::NotFound
        );
        // An id longer than any request's is refused.
        assert_eq!(
            code(window.report(&"x".repeat(MAX_REQUEST_ID + 1), Some(1.0), &[])),
            ErrorKind::InvalidInput
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
    fn an_outcome_joins_the_latest_served_decision_before_it_with_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let outcome = |reward: f64| LoggedOutcome {
            request_id: "r0".into(),
            reward,
            f1: None,
            sequence: None,
        };
        {
            let log = DecisionLog::open(&path).unwrap();
            // An outcome whose decision rotated away joins nothing.
            log.record_outcome(&outcome(0.5));
            log.record(&decision(0));
            log.record(&LoggedDecision {
                shadow: true,
                ..decision(0)
            });
            log.record_outcome(&outcome(1.0));
            // The client sent the same request id again.
            log.record(&decision(0));
            log.record_outcome(&outcome(0.0));
        }
        let rewards: Vec<(bool, Option<f64>)> = read_log(&path)
            .unwrap()
            .iter()
            .map(|d| (d.shadow, d.reward))
            .collect();
        assert_eq!(
            rewards,
            [(false, Some(1.0)), (true, None), (false, Some(0.0))]
        );

        // Two requests in flight with one id: each outcome joins the decision with its
        // sequence number, whatever the order of the lines.
        let path = dir.path().join("numbered.jsonl");
        let outcomes = Outcomes::new(8, Duration::from_secs(3600));
        {
            let log = DecisionLog::open(&path).unwrap();
            let first = outcomes.expect("r0", Some("Broncos"));
            let second = outcomes.expect("r0", Some("Panthers"));
            log.record(&LoggedDecision {
                sequence: Some(second),
                ..decision(0)
            });
            log.record(&LoggedDecision {
                sequence: Some(first),
                ..decision(0)
            });
            let gold = ["Panthers".to_owned()];
            log.record_outcome(&outcomes.report("r0", None, &gold).unwrap());
        }
        let rewards: Vec<Option<f64>> = read_log(&path).unwrap().iter().map(|d| d.reward).collect();
        assert_eq!(rewards, [Some(1.0), None]);
    }

    #[test]
    fn flushing_every_line_from_many_threads_keeps_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let options = LogOptions {
            sync: Sync::Always,
            max_bytes: 4096,
            keep: 100,
        };
        let log = Arc::new(DecisionLog::open_with(&path, options).unwrap());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for n in 0..25 {
                        log.record(&decision(t * 100 + n));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert!(!log.shared.current().dirty);
        drop(log);
        let mut ids: Vec<String> = read_log(&path)
            .unwrap()
            .into_iter()
            .map(|d| d.request_id)
            .collect();
        ids.sort();
        let mut expected: Vec<String> = (0..4)
            .flat_map(|t| (0..25).map(move |n| format!("r{}", t * 100 + n)))
            .collect();
        expected.sort();
        assert_eq!(ids, expected);
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
