//! The pool file (TOML): which experts exist, what each costs, how each is served.
//!
//! ```toml
//! [[expert]]
//! id = "bert"                      # unique; letters, digits, '-', '_', '.'
//! backend = "replay"               # replay (recorded answers), lexical or typed (live readers),
//!                                  # openai or kserve (model servers, below)
//! predictions = "../data/squad-v1.1/predictions/bert-large-ensemble.json"
//! data = "../data/squad-v1.1/dev.json"   # resolves queries sent without an id
//! cost = 100                       # declared relative cost of one call, > 0
//! accuracy = 0.862                 # optional prior P(correct), used by the prior policy
//! replicas = 1                     # in-process copies (default 1; 0: replicas join by registration)
//! # address = "127.0.0.1:50061"    # a running worker instead of in-process copies
//! # addresses = ["127.0.0.1:50061", "127.0.0.1:50062"]   # several running workers
//! # dns = "l2d-expert-bert:50061"  # every address a name resolves to (re-resolved periodically),
//! #                                # e.g. a Kubernetes headless Service
//! # max_in_flight = 16             # calls the scheduler sends one replica at once (default 128);
//! #                                # in-process replicas also answer at most this many at once
//! # service_time = "20ms"          # any backend: the median time an answer takes, slept by the
//! # service_time_p99 = "60ms"      # worker (lognormal between the two; p99 defaults to the median)
//! # max_context_chars = 4000       # what it takes: the longest context in characters and/or in
//! # max_context_tokens = 1024      # l2d's tokens, and the languages it answers in (BCP 47); a
//! # languages = ["en"]             # query beyond them is not sent to it (replay experts also
//! #                                # announce the questions they hold)
//!
//! [[expert]]                       # an LLM behind an OpenAI-compatible API (vLLM, llama.cpp…)
//! id = "llm"
//! backend = "openai"
//! url = "http://vllm:8000/v1"      # the base URL, as OpenAI clients take it
//! model = "Qwen/Qwen2.5-7B-Instruct"
//! cost = 400
//! # api_key_env = "VLLM_API_KEY"   # the NAME of the variable holding the key
//! # prompt = "... {context} ... {question} ..."   # default: expert::openai::DEFAULT_PROMPT
//! # max_tokens = 32                # default 32
//! # timeout = "30s"                # per call, cut to the query's deadline (default 30 s)
//! # max_in_flight = 8              # model servers default to 8 (the worker's limit too)
//!
//! [[expert]]                       # a model behind the Open Inference Protocol (Triton, KServe,
//! id = "reader"                    # MLServer, OpenVINO Model Server), gRPC
//! backend = "kserve"
//! url = "http://triton:8001"
//! model = "qa"
//! # version = "1"                  # default: the server's choice
//! # timeout = "10s"                # default 10 s
//! cost = 10
//! ```
//!
//! `replicas`, `address`, `addresses` and `dns` are exclusive: one way to place an expert.
//!
//! Relative paths resolve from the pool file's folder. Errors name the file, the expert and the
//! field. Parsing is separate from reading ([`PoolFile::parse`] takes text), so tests need no files.

use crate::core::capability::Capabilities;
use crate::core::service_time::{ServiceTime, ServiceTimeError};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct PoolFile {
    /// Where the pool was read from (for messages).
    pub path: PathBuf,
    pub experts: Vec<ExpertSpec>,
    /// Digest of the text it was parsed from (a reload compares it with the file's).
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExpertSpec {
    pub id: String,
    pub cost: f64,
    pub accuracy: Option<f64>,
    pub backend: BackendSpec,
    pub placement: Placement,
    /// Per-replica concurrency limit at the scheduler (`None`: the scheduler's default).
    pub max_in_flight: Option<u32>,
    /// Time the worker takes per answer (slept before the backend answers), if any.
    pub service_time: Option<ServiceTime>,
    /// What it takes, declared here on top of what its replicas declare (limits and
    /// languages; holdings come from the replicas).
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    /// Serves recorded answers: `{question id: answer}`.
    Replay {
        predictions: PathBuf,
        data: Option<PathBuf>,
    },
    /// The sliding-window reader (computes answers; no files).
    Lexical,
    /// BM25 sentence ranking plus answer-type rules (computes answers; no files).
    Typed,
    /// An LLM behind an OpenAI-compatible HTTP API.
    OpenAi(crate::expert::openai::OpenAiConfig),
    /// A model behind the Open Inference Protocol (KServe V2) over gRPC.
    KServe(crate::expert::kserve::KServeConfig),
}

impl BackendSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::Replay { .. } => "replay",
            BackendSpec::Lexical => "lexical",
            BackendSpec::Typed => "typed",
            BackendSpec::OpenAi(_) => "openai",
            BackendSpec::KServe(_) => "kserve",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// `replicas` copies served inside this process on loopback (0: none; replicas register).
    InProcess { replicas: u32 },
    /// Workers already running at these addresses.
    Remote { addresses: Vec<SocketAddr> },
    /// Workers at every address `host:port` resolves to, resolved again periodically.
    Dns { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PoolFileError {
    #[error("cannot read pool file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pool file {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("pool file {}: expert {expert}: field `{field}`: {message}", path.display())]
    Field {
        path: PathBuf,
        expert: String,
        field: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default)]
    expert: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpert {
    id: String,
    backend: String,
    cost: f64,
    predictions: Option<PathBuf>,
    data: Option<PathBuf>,
    accuracy: Option<f64>,
    address: Option<String>,
    addresses: Option<Vec<String>>,
    dns: Option<String>,
    replicas: Option<i64>,
    max_in_flight: Option<i64>,
    service_time: Option<String>,
    service_time_p99: Option<String>,
    max_context_chars: Option<i64>,
    max_context_tokens: Option<i64>,
    languages: Option<Vec<String>>,
    url: Option<String>,
    model: Option<String>,
    version: Option<String>,
    api_key_env: Option<String>,
    prompt: Option<String>,
    max_tokens: Option<i64>,
    timeout: Option<String>,
}

const BACKENDS: &[&str] = &["replay", "lexical", "typed", "openai", "kserve"];

impl PoolFile {
    pub fn load(path: &Path) -> Result<Self, PoolFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PoolFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses pool-file text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PoolFileError> {
        let syntax = |message: String| PoolFileError::Syntax {
            path: path.to_owned(),
            message,
        };
        let raw: RawPool =
            toml::from_str(text).map_err(|e| syntax(e.to_string().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut experts = Vec::with_capacity(raw.expert.len());
        let mut ids = HashSet::new();
        for (index, value) in raw.expert.into_iter().enumerate() {
            // Name the expert by its id when it has one, by its position otherwise.
            let name = value
                .get("id")
                .and_then(|v| v.as_str())
                .map(|id| format!("{id:?}"))
                .unwrap_or_else(|| format!("#{}", index + 1));
            let field_error = |field: &str, message: String| PoolFileError::Field {
                path: path.to_owned(),
                expert: name.clone(),
                field: field.to_owned(),
                message,
            };
            let raw: RawExpert = serde_path_to_error::deserialize(value).map_err(|e| {
                let field = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = if field == "." {
                    missing_field(&message).unwrap_or(field)
                } else {
                    field
                };
                field_error(&field, message)
            })?;
            let spec = expert_spec(raw, base, &field_error)?;
            if !ids.insert(spec.id.clone()) {
                return Err(field_error(
                    "id",
                    "another expert already has this id".into(),
                ));
            }
            experts.push(spec);
        }
        Ok(Self {
            path: path.to_owned(),
            experts,
            digest: crate::core::learned::digest(text.as_bytes()),
        })
    }
}

impl PoolFile {
    /// The pool with only the experts `ids` (kept in pool order). An id the pool does not have
    /// is an error that lists the ones it has.
    pub fn only(&self, ids: &[String]) -> Result<PoolFile, String> {
        if let Some(unknown) = ids
            .iter()
            .find(|id| !self.experts.iter().any(|e| &e.id == *id))
        {
            let known: Vec<&str> = self.experts.iter().map(|e| e.id.as_str()).collect();
            return Err(format!(
                "pool file {} has no expert {unknown:?} (it has: {})",
                self.path.display(),
                known.join(", ")
            ));
        }
        Ok(PoolFile {
            experts: self
                .experts
                .iter()
                .filter(|e| ids.contains(&e.id))
                .cloned()
                .collect(),
            ..self.clone()
        })
    }

    /// The price of waiting for each expert's answer at zero load, by expert id: `wait_price`
    /// (cost units per second) × its mean service time (0 for an expert without one).
    pub fn waiting(&self, wait_price: f64) -> std::collections::BTreeMap<String, f64> {
        self.experts
            .iter()
            .map(|e| {
                let mean = e.service_time.map_or(0.0, |t| t.mean());
                (e.id.clone(), wait_price * mean)
            })
            .collect()
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

fn expert_spec(
    raw: RawExpert,
    base: &Path,
    field_error: &dyn Fn(&str, String) -> PoolFileError,
) -> Result<ExpertSpec, PoolFileError> {
    check_expert_id(&raw.id).map_err(|m| field_error("id", m))?;
    if !(raw.cost.is_finite() && raw.cost > 0.0) {
        return Err(field_error(
            "cost",
            format!("must be a positive finite number, got {}", raw.cost),
        ));
    }
    if let Some(a) = raw.accuracy
        && !(0.0..=1.0).contains(&a)
    {
        return Err(field_error(
            "accuracy",
            format!("must be in [0, 1], got {a}"),
        ));
    }
    let backend = backend_spec(&raw, base, field_error)?;
    let given: Vec<&str> = [
        ("replicas", raw.replicas.is_some()),
        ("address", raw.address.is_some()),
        ("addresses", raw.addresses.is_some()),
        ("dns", raw.dns.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| *name)
    .collect();
    if given.len() > 1 {
        return Err(field_error(
            given[1],
            format!(
                "`{}` and `{}` both place the expert; use one of replicas, address, addresses, dns",
                given[0], given[1]
            ),
        ));
    }
    let socket = |field: &str, address: &str| -> Result<SocketAddr, PoolFileError> {
        address.parse().map_err(|e| {
            field_error(
                field,
                format!("{address:?} is not an IP:port socket address ({e})"),
            )
        })
    };
    let placement = if let Some(address) = &raw.address {
        Placement::Remote {
            addresses: vec![socket("address", address)?],
        }
    } else if let Some(list) = &raw.addresses {
        if list.is_empty() || list.len() > 256 {
            return Err(field_error(
                "addresses",
                format!("must list 1 to 256 addresses, got {}", list.len()),
            ));
        }
        let addresses = list
            .iter()
            .map(|a| socket("addresses", a))
            .collect::<Result<Vec<_>, _>>()?;
        Placement::Remote { addresses }
    } else if let Some(name) = raw.dns {
        check_dns_name(&name).map_err(|m| field_error("dns", m))?;
        Placement::Dns { name }
    } else {
        let replicas = raw.replicas.unwrap_or(1);
        if !(0..=64).contains(&replicas) {
            return Err(field_error(
                "replicas",
                format!("must be between 0 and 64, got {replicas}"),
            ));
        }
        Placement::InProcess {
            replicas: replicas as u32,
        }
    };
    let max_in_flight = match raw.max_in_flight {
        // A model server takes few calls at once: the scheduler's default would flood it.
        None if matches!(backend, BackendSpec::OpenAi(_) | BackendSpec::KServe(_)) => {
            Some(MODEL_SERVER_MAX_IN_FLIGHT)
        }
        None => None,
        Some(n) if (1..=65_536).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(field_error(
                "max_in_flight",
                format!("must be between 1 and 65536, got {n}"),
            ));
        }
    };
    let duration = |field: &str, text: &Option<String>| duration(field, text, field_error);
    let median = duration("service_time", &raw.service_time)?;
    let p99 = duration("service_time_p99", &raw.service_time_p99)?;
    let service_time = match (median, p99) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(field_error(
                "service_time_p99",
                "needs `service_time`, the median".into(),
            ));
        }
        (Some(median), p99) => Some(ServiceTime::new(median, p99).map_err(|e| {
            let field = match e {
                ServiceTimeError::Median => "service_time",
                ServiceTimeError::P99 { .. } => "service_time_p99",
            };
            field_error(field, e.to_string())
        })?),
    };
    let limit = |field: &str, value: Option<i64>| match value {
        None => Ok(None),
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(field_error(
            field,
            format!("must be a positive number of at most {}, got {n}", u32::MAX),
        )),
    };
    let capabilities = Capabilities {
        max_context_chars: limit("max_context_chars", raw.max_context_chars)?,
        max_context_tokens: limit("max_context_tokens", raw.max_context_tokens)?,
        languages: Capabilities::parse_languages(raw.languages.as_deref().unwrap_or_default())
            .map_err(|m| field_error("languages", m))?,
        holds: None,
    };
    Ok(ExpertSpec {
        id: raw.id,
        cost: raw.cost,
        accuracy: raw.accuracy,
        backend,
        placement,
        max_in_flight,
        service_time,
        capabilities,
    })
}

/// The optional field `field`, a duration like "20ms".
fn duration(
    field: &str,
    text: &Option<String>,
    field_error: &dyn Fn(&str, String) -> PoolFileError,
) -> Result<Option<std::time::Duration>, PoolFileError> {
    text.as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|e| {
                field_error(
                    field,
                    format!("{t:?} is not a duration like \"20ms\" ({e})"),
                )
            })
        })
        .transpose()
}

/// Per-replica calls at once for a model-server expert whose pool entry sets no
/// `max_in_flight`: the worker's limit and what it announces to the scheduler.
pub const MODEL_SERVER_MAX_IN_FLIGHT: u32 = 8;

/// Fields that belong to some backends only, and which.
const BACKEND_FIELDS: &[(&str, &[&str])] = &[
    ("predictions", &["replay"]),
    ("data", &["replay"]),
    ("url", &["openai", "kserve"]),
    ("model", &["openai", "kserve"]),
    ("timeout", &["openai", "kserve"]),
    ("version", &["kserve"]),
    ("api_key_env", &["openai"]),
    ("prompt", &["openai"]),
    ("max_tokens", &["openai"]),
];

/// How the expert answers: its backend and that backend's fields.
fn backend_spec(
    raw: &RawExpert,
    base: &Path,
    field_error: &dyn Fn(&str, String) -> PoolFileError,
) -> Result<BackendSpec, PoolFileError> {
    let backend = raw.backend.as_str();
    if !BACKENDS.contains(&backend) {
        return Err(field_error(
            "backend",
            format!(
                "unknown backend {backend:?}; known: {}",
                BACKENDS.join(", ")
            ),
        ));
    }
    let given = [
        raw.predictions.is_some(),
        raw.data.is_some(),
        raw.url.is_some(),
        raw.model.is_some(),
        raw.timeout.is_some(),
        raw.version.is_some(),
        raw.api_key_env.is_some(),
        raw.prompt.is_some(),
        raw.max_tokens.is_some(),
    ];
    for (&(field, owners), given) in BACKEND_FIELDS.iter().zip(given) {
        if given && !owners.contains(&backend) {
            return Err(field_error(
                field,
                format!("is for backend {}, not {backend}", owners.join(" or ")),
            ));
        }
    }
    let resolve = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    let required = |field: &str, value: &Option<String>| {
        value
            .clone()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| field_error(field, format!("backend {backend:?} needs it")))
    };
    let timeout = |default: std::time::Duration| -> Result<_, PoolFileError> {
        match duration("timeout", &raw.timeout, field_error)? {
            None => Ok(default),
            Some(t) if !t.is_zero() => Ok(t),
            Some(_) => Err(field_error("timeout", "must be longer than zero".into())),
        }
    };
    let max_concurrency = raw
        .max_in_flight
        .map_or(MODEL_SERVER_MAX_IN_FLIGHT, |n| n.clamp(1, 65_536) as u32);
    Ok(match backend {
        "replay" => BackendSpec::Replay {
            predictions: resolve(raw.predictions.as_ref().ok_or_else(|| {
                field_error(
                    "predictions",
                    "a replay expert needs its recorded answers file".into(),
                )
            })?),
            data: raw.data.as_ref().map(resolve),
        },
        "lexical" => BackendSpec::Lexical,
        "typed" => BackendSpec::Typed,
        "openai" => {
            use crate::expert::openai::{DEFAULT_PROMPT, OpenAiConfig};
            let url = required("url", &raw.url)?;
            let url = reqwest::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    field_error(
                        "url",
                        format!(
                            "{url:?} is not an http:// or https:// URL like http://vllm:8000/v1"
                        ),
                    )
                })?;
            // It is logged and named in errors: no secret in it, and paths are appended to it.
            if !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(field_error(
                    "url",
                    "must be a base URL without a user, a password, a query or a fragment (the \
                     key goes in api_key_env)"
                        .into(),
                ));
            }
            let prompt = raw.prompt.clone().unwrap_or_else(|| DEFAULT_PROMPT.into());
            OpenAiConfig::check_prompt(&prompt).map_err(|m| field_error("prompt", m))?;
            if let Some(name) = &raw.api_key_env
                && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(field_error(
                    "api_key_env",
                    format!(
                        "{name:?} is not an environment variable's name (the name, not the key)"
                    ),
                ));
            }
            let max_tokens = match raw.max_tokens {
                None => OpenAiConfig::DEFAULT_MAX_TOKENS,
                Some(n) if (1..=4096).contains(&n) => n as u32,
                Some(n) => {
                    return Err(field_error(
                        "max_tokens",
                        format!("must be between 1 and 4096, got {n}"),
                    ));
                }
            };
            BackendSpec::OpenAi(OpenAiConfig {
                url,
                model: required("model", &raw.model)?,
                api_key_env: raw.api_key_env.clone(),
                prompt,
                max_tokens,
                timeout: timeout(OpenAiConfig::DEFAULT_TIMEOUT)?,
                max_concurrency,
            })
        }
        _ => {
            use crate::expert::kserve::KServeConfig;
            let url = required("url", &raw.url)?;
            KServeConfig::check_url(&url).map_err(|m| field_error("url", m))?;
            BackendSpec::KServe(KServeConfig {
                url,
                model: required("model", &raw.model)?,
                version: raw.version.clone().unwrap_or_default(),
                timeout: timeout(KServeConfig::DEFAULT_TIMEOUT)?,
            })
        }
    })
}

/// `host:port` with a plausible DNS host name (letters, digits, '-', '.') and a numeric port.
fn check_dns_name(name: &str) -> Result<(), String> {
    let (host, port) = name
        .rsplit_once(':')
        .ok_or_else(|| format!("{name:?} has no port; expected host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{name:?} has no valid port; expected host:port"))?;
    let plausible = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !plausible {
        return Err(format!("{host:?} is not a DNS host name"));
    }
    Ok(())
}

/// Expert ids appear in metrics labels, logs and file names: keep them short and plain.
pub fn check_expert_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 64 {
        return Err(format!("must be at most 64 bytes, got {}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{id:?} has the character {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<PoolFile, PoolFileError> {
        PoolFile::parse(text, Path::new("pools/test.toml"))
    }

    #[test]
    fn parses_experts_and_resolves_paths_from_the_file_folder() {
        let pool = parse(
            r#"
            [[expert]]
            id = "lr"
            backend = "replay"
            predictions = "../data/lr.json"
            data = "/abs/dev.json"
            cost = 1
            accuracy = 0.4

            [[expert]]
            id = "bert"
            backend = "replay"
            predictions = "bert.json"
            cost = 100.0
            address = "127.0.0.1:7000"
            "#,
        )
        .unwrap();
        assert_eq!(pool.experts.len(), 2);
        let lr = &pool.experts[0];
        assert_eq!(lr.cost, 1.0);
        assert_eq!(lr.accuracy, Some(0.4));
        assert_eq!(lr.placement, Placement::InProcess { replicas: 1 });
        assert_eq!(
            lr.backend,
            BackendSpec::Replay {
                predictions: PathBuf::from("pools/../data/lr.json"),
                data: Some(PathBuf::from("/abs/dev.json")),
            }
        );
        assert_eq!(
            pool.experts[1].placement,
            Placement::Remote {
                addresses: vec!["127.0.0.1:7000".parse().unwrap()]
            }
        );
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const OK: &str = "id = \"x\"\nbackend = \"replay\"\npredictions = \"p.json\"\n";

    #[test]
    fn errors_name_file_expert_and_field() {
        assert_eq!(
            err(&format!("[[expert]]\n{OK}cost = -1\n")),
            "pool file pools/test.toml: expert \"x\": field `cost`: must be a positive finite number, got -1"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = \"cheap\"\n"));
        assert!(
            e.starts_with("pool file pools/test.toml: expert \"x\": field `cost`: invalid type"),
            "{e}"
        );
        let e = err("[[expert]]\nbackend = \"replay\"\ncost = 1\n");
        assert!(
            e.starts_with("pool file pools/test.toml: expert #1: field `id`: missing field"),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\ncots = 2\n"));
        assert!(
            e.starts_with("pool file pools/test.toml: expert \"x\": field `cots`: unknown field `cots`, expected one of"),
            "{e}"
        );
        let e = err("[[expert]]\nid = \"x\"\nbackend = \"neural\"\ncost = 1\n");
        assert!(
            e.contains("field `backend`: unknown backend \"neural\""),
            "{e}"
        );
        let e = err("[[expert]]\nid = \"x\"\nbackend = \"replay\"\ncost = 1\n");
        assert!(e.contains("field `predictions`"), "{e}");
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\naddress = \"localhost\"\n"
        ));
        assert!(
            e.contains("field `address`: \"localhost\" is not an IP:port"),
            "{e}"
        );
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\naddress = \"127.0.0.1:1\"\nreplicas = 2\n"
        ));
        assert!(
            e.contains("field `address`: `replicas` and `address` both place the expert"),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\ndns = \"a b:80\"\n"));
        assert!(
            e.contains("field `dns`: \"a b\" is not a DNS host name"),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\ndns = \"svc\"\n"));
        assert!(e.contains("field `dns`: \"svc\" has no port"), "{e}");
        let e = err(&format!("[[expert]]\n{OK}cost = 1\naddresses = []\n"));
        assert!(e.contains("field `addresses`: must list 1 to 256"), "{e}");
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\naddresses = [\"127.0.0.1:1\", \"x\"]\n"
        ));
        assert!(
            e.contains("field `addresses`: \"x\" is not an IP:port"),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\nmax_in_flight = 0\n"));
        assert!(
            e.contains("field `max_in_flight`: must be between 1 and 65536, got 0"),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\nreplicas = -2\n"));
        assert!(
            e.contains("field `replicas`: must be between 0 and 64"),
            "{e}"
        );
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\n[[expert]]\n{OK}cost = 2\n"
        ));
        assert!(
            e.contains("expert \"x\": field `id`: another expert already has this id"),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\naccuracy = 2\n"));
        assert!(e.contains("field `accuracy`: must be in [0, 1]"), "{e}");
        let e =
            err("[[expert]]\nid = \"a b\"\nbackend = \"replay\"\npredictions = \"p\"\ncost = 1\n");
        assert!(
            e.contains("field `id`: \"a b\" has the character ' '"),
            "{e}"
        );
        let e = err("[[expert]\n");
        assert!(
            e.starts_with("pool file pools/test.toml: TOML parse error"),
            "{e}"
        );
    }

    #[test]
    fn live_backends_take_no_files() {
        let pool = parse("[[expert]]\nid = \"lex\"\nbackend = \"lexical\"\ncost = 0.25\n[[expert]]\nid = \"t\"\nbackend = \"typed\"\ncost = 0.5\n").unwrap();
        assert_eq!(pool.experts[0].backend, BackendSpec::Lexical);
        assert_eq!(pool.experts[1].backend, BackendSpec::Typed);
        let e = err(
            "[[expert]]\nid = \"lex\"\nbackend = \"lexical\"\ncost = 1\npredictions = \"p.json\"\n",
        );
        assert!(
            e.ends_with("field `predictions`: is for backend replay, not lexical"),
            "{e}"
        );
    }

    #[test]
    fn experts_can_be_placed_on_many_addresses_or_a_dns_name() {
        let pool = parse(&format!(
            "[[expert]]\n{OK}cost = 1\naddresses = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nmax_in_flight = 8\n\
             [[expert]]\nid = \"y\"\nbackend = \"lexical\"\ncost = 1\ndns = \"l2d-expert-y.l2d.svc:50061\"\n"
        ))
        .unwrap();
        assert_eq!(
            pool.experts[0].placement,
            Placement::Remote {
                addresses: vec![
                    "127.0.0.1:1".parse().unwrap(),
                    "127.0.0.1:2".parse().unwrap()
                ]
            }
        );
        assert_eq!(pool.experts[0].max_in_flight, Some(8));
        assert_eq!(
            pool.experts[1].placement,
            Placement::Dns {
                name: "l2d-expert-y.l2d.svc:50061".into()
            }
        );
        assert_eq!(pool.experts[1].max_in_flight, None);
    }

    #[test]
    fn any_expert_may_declare_context_limits_and_languages() {
        let pool = parse(&format!(
            "[[expert]]\n{OK}cost = 1\nmax_context_chars = 4000\nmax_context_tokens = 900\n\
             languages = [\"en-US\", \"de\"]\n[[expert]]\nid = \"y\"\nbackend = \"lexical\"\ncost = 1\n"
        ))
        .unwrap();
        let declared = &pool.experts[0].capabilities;
        assert_eq!(
            (declared.max_context_chars, declared.max_context_tokens),
            (Some(4000), Some(900))
        );
        assert_eq!(declared.languages, ["en", "de"]);
        assert!(pool.experts[1].capabilities.is_unlimited());
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\nmax_context_chars = 0\n"
        ));
        assert!(
            e.ends_with(
                "field `max_context_chars`: must be a positive number of at most 4294967295, got 0"
            ),
            "{e}"
        );
        let e = err(&format!("[[expert]]\n{OK}cost = 1\nlanguages = [\"\"]\n"));
        assert!(
            e.ends_with("field `languages`: \"\" is not a language tag (e.g. \"en\", \"de-CH\")"),
            "{e}"
        );
    }

    #[test]
    fn only_keeps_the_named_experts_in_pool_order() {
        let pool = parse(&format!(
            "[[expert]]\n{OK}cost = 1\n[[expert]]\nid = \"y\"\nbackend = \"lexical\"\ncost = 1\n"
        ))
        .unwrap();
        let ids = |p: &PoolFile| p.experts.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(&pool.only(&["y".into(), "x".into()]).unwrap()),
            ["x", "y"]
        );
        assert_eq!(ids(&pool.only(&["y".into()]).unwrap()), ["y"]);
        let e = pool.only(&["z".into()]).unwrap_err();
        assert!(e.ends_with("has no expert \"z\" (it has: x, y)"), "{e}");
    }

    #[test]
    fn service_times_are_durations_with_a_p99_at_least_the_median() {
        let pool = parse(&format!(
            "[[expert]]\n{OK}cost = 1\nservice_time = \"20ms\"\nservice_time_p99 = \"60ms\"\n\
             [[expert]]\nid = \"y\"\nbackend = \"lexical\"\ncost = 1\nservice_time = \"1s\"\n"
        ))
        .unwrap();
        let t = pool.experts[0].service_time.unwrap();
        assert_eq!(
            (t.median(), t.p99()),
            (Duration::from_millis(20), Duration::from_millis(60))
        );
        let t = pool.experts[1].service_time.unwrap();
        assert_eq!(
            (t.median(), t.p99()),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\nservice_time = \"fast\"\n"
        ));
        assert!(
            e.contains("field `service_time`: \"fast\" is not a duration"),
            "{e}"
        );
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\nservice_time = \"20ms\"\nservice_time_p99 = \"10ms\"\n"
        ));
        assert!(e.contains("field `service_time_p99`: the 99th percentile (10ms) must be at least the median (20ms)"), "{e}");
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\nservice_time_p99 = \"10ms\"\n"
        ));
        assert!(
            e.ends_with("field `service_time_p99`: needs `service_time`, the median"),
            "{e}"
        );
        let e = err(&format!(
            "[[expert]]\n{OK}cost = 1\nservice_time = \"0s\"\n"
        ));
        assert!(
            e.contains("field `service_time`: the median service time must be longer than 0s"),
            "{e}"
        );
    }

    #[test]
    fn model_servers_are_described_by_url_and_model_with_defaults() {
        let pool = parse(
            r#"
            [[expert]]
            id = "llm"
            backend = "openai"
            url = "http://vllm:8000/v1"
            model = "qwen"
            api_key_env = "VLLM_API_KEY"
            cost = 400
            [[expert]]
            id = "reader"
            backend = "kserve"
            url = "http://triton:8001"
            model = "qa"
            version = "2"
            timeout = "250ms"
            max_in_flight = 3
            cost = 10
            "#,
        )
        .unwrap();
        let BackendSpec::OpenAi(llm) = &pool.experts[0].backend else {
            panic!("{:?}", pool.experts[0].backend)
        };
        assert_eq!(llm.url.as_str(), "http://vllm:8000/v1");
        assert_eq!(llm.api_key_env.as_deref(), Some("VLLM_API_KEY"));
        assert_eq!(llm.prompt, crate::expert::openai::DEFAULT_PROMPT);
        assert_eq!(
            (llm.max_tokens, llm.timeout),
            (32, std::time::Duration::from_secs(30))
        );
        // A model server takes few calls at once unless the pool says otherwise.
        assert_eq!(
            pool.experts[0].max_in_flight,
            Some(MODEL_SERVER_MAX_IN_FLIGHT)
        );
        let BackendSpec::KServe(reader) = &pool.experts[1].backend else {
            panic!("{:?}", pool.experts[1].backend)
        };
        assert_eq!(
            (
                reader.url.as_str(),
                reader.model.as_str(),
                reader.version.as_str()
            ),
            ("http://triton:8001", "qa", "2")
        );
        assert_eq!(reader.timeout, std::time::Duration::from_millis(250));
        assert_eq!(pool.experts[1].max_in_flight, Some(3));
    }

    #[test]
    fn model_server_fields_are_checked_and_kept_to_their_backends() {
        let openai = "[[expert]]\nid = \"x\"\nbackend = \"openai\"\ncost = 1\n";
        let cases = [
            (
                format!("{openai}model = \"m\"\n"),
                "field `url`: backend \"openai\" needs it",
            ),
            (
                format!("{openai}model = \"m\"\nurl = \"vllm:8000\"\n"),
                "field `url`: \"vllm:8000\" is not an http:// or https:// URL like http://vllm:8000/v1",
            ),
            (
                format!("{openai}url = \"http://h/v1\"\n"),
                "field `model`: backend \"openai\" needs it",
            ),
            (
                format!("{openai}url = \"http://h/v1\"\nmodel = \"m\"\nprompt = \"Q: {{question}}\"\n"),
                "field `prompt`: the prompt template has no {context}",
            ),
            (
                format!("{openai}url = \"http://h/v1\"\nmodel = \"m\"\napi_key_env = \"sk-live-123\"\n"),
                "field `api_key_env`: \"sk-live-123\" is not an environment variable's name (the name, not the key)",
            ),
            (
                format!("{openai}url = \"http://h/v1\"\nmodel = \"m\"\nversion = \"1\"\n"),
                "field `version`: is for backend kserve, not openai",
            ),
            (
                format!("{openai}url = \"http://h/v1\"\nmodel = \"m\"\ntimeout = \"0s\"\n"),
                "field `timeout`: must be longer than zero",
            ),
            (
                format!("[[expert]]\n{OK}cost = 1\nurl = \"http://h\"\n"),
                "field `url`: is for backend openai or kserve, not replay",
            ),
            (
                "[[expert]]\nid = \"x\"\nbackend = \"kserve\"\ncost = 1\nmodel = \"m\"\nurl = \"triton:8001\"\n".into(),
                "field `url`: \"triton:8001\" must be http://host:port or https://host:port",
            ),
            (
                "[[expert]]\nid = \"x\"\nbackend = \"kserve\"\ncost = 1\nmodel = \"m\"\nurl = \"http://triton\"\n".into(),
                "field `url`: \"http://triton\" must be http://host:port or https://host:port",
            ),
            (
                format!("{openai}model = \"m\"\nurl = \"http://user:sk-123@h/v1\"\n"),
                "field `url`: must be a base URL without a user, a password, a query or a fragment (the key goes in api_key_env)",
            ),
            (
                format!("{openai}model = \"m\"\nurl = \"http://h/v1?api-version=1\"\n"),
                "field `url`: must be a base URL without a user, a password, a query or a fragment (the key goes in api_key_env)",
            ),
        ];
        for (text, expected) in cases {
            let e = err(&text);
            assert!(e.ends_with(expected), "{e}\nwanted the end: {expected}");
        }
    }

    #[test]
    fn the_example_pool_of_model_servers_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/model_servers/pool.toml");
        let pool = PoolFile::load(&path).unwrap();
        let kinds: Vec<&str> = pool.experts.iter().map(|e| e.backend.kind()).collect();
        assert_eq!(kinds, ["replay", "kserve", "openai"]);
    }

    #[test]
    fn an_empty_file_is_an_empty_pool() {
        assert!(parse("").unwrap().experts.is_empty());
    }
}
