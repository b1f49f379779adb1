//! The `openai` backend: an LLM behind an OpenAI-compatible HTTP API (vLLM, SGLang, TGI,
//! llama.cpp's server, Ollama…), asked for an extractive answer.
//!
//! Each query is one chat completion at temperature 0 (`POST {url}/chat/completions`) with the
//! prompt template filled in; the reply is aligned to a span of the context ([`super::align`]),
//! and the answer carries that span and the context's own text for it, or "no answer" when
//! nothing fits. The tokens the server reports (prompt and completion) are the answer's compute
//! units. The model is ready while `GET {url}/models` lists it. One HTTP client per backend
//! keeps its connections; each call's timeout is the backend's, cut to the caller's deadline.

use super::align;
use super::{BackendAnswer, BackendError, Limit, Model, answer_from};
use crate::core::query::Query;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use std::time::Duration;

/// The prompt when the pool file gives none: a short span copied from the context, or
/// "unanswerable".
pub const DEFAULT_PROMPT: &str = "Answer the question with a short span copied exactly from \
the context: a few words, not a sentence, no explanation. If the context does not contain the \
answer, reply: unanswerable.\n\nContext: {context}\n\nQuestion: {question}\n\nAnswer:";

/// How long a readiness check may take.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// The `openai` backend's settings, as the pool file gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The API's base URL as OpenAI clients take it, e.g. `http://vllm:8000/v1`.
    pub url: reqwest::Url,
    pub model: String,
    /// The name of the environment variable that holds the API key (never the key).
    pub api_key_env: Option<String>,
    /// With `{question}` and `{context}`.
    pub prompt: String,
    pub max_tokens: u32,
    /// The longest a call may take (cut to the caller's deadline).
    pub timeout: Duration,
    /// Calls sent at once: the worker's concurrency limit, and the connections kept.
    pub max_concurrency: u32,
}

impl OpenAiConfig {
    pub const DEFAULT_MAX_TOKENS: u32 = 32;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Checks a prompt template: it must place both the question and the context.
    pub fn check_prompt(prompt: &str) -> Result<(), String> {
        for field in ["{question}", "{context}"] {
            if !prompt.contains(field) {
                return Err(format!("the prompt template has no {field}"));
            }
        }
        Ok(())
    }
}

/// `template` with `{question}` and `{context}` filled in, in one pass (a question or context
/// that contains a placeholder's text is left as it is).
pub fn render_prompt(template: &str, question: &str, context: &str) -> String {
    let mut out = String::with_capacity(template.len() + question.len() + context.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{question}") {
            out.push_str(question);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{context}") {
            out.push_str(context);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

pub struct OpenAiBackend {
    config: OpenAiConfig,
    client: reqwest::Client,
    completions: reqwest::Url,
    models: reqwest::Url,
    /// `Bearer <key>`, marked sensitive (never printed).
    authorization: Option<HeaderValue>,
}

#[derive(serde::Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage<'a>; 1],
    temperature: f64,
    max_tokens: u32,
}

#[derive(serde::Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(serde::Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(serde::Deserialize)]
struct Choice {
    message: Option<ReplyMessage>,
}

#[derive(serde::Deserialize)]
struct ReplyMessage {
    content: Option<String>,
}

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(serde::Deserialize)]
struct ModelList {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(serde::Deserialize)]
struct ModelEntry {
    id: String,
}

/// rustls needs a process-wide crypto provider for reqwest's TLS; l2d uses ring everywhere.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider is installed already, which serves as well.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}

impl OpenAiBackend {
    /// A client for `config`; reads the API key from its environment variable now, so a
    /// missing key is an error at start rather than on every call.
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        let authorization = match &config.api_key_env {
            None => None,
            Some(name) => {
                let key = std::env::var(name).map_err(|_| {
                    anyhow::anyhow!("the environment variable {name} (api_key_env) is not set")
                })?;
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                        anyhow::anyhow!(
                            "the environment variable {name} (api_key_env) holds characters a \
                             header cannot carry"
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_concurrency.max(1) as usize)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .user_agent(concat!("l2d/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base = config.url.as_str().trim_end_matches('/');
        let completions = reqwest::Url::parse(&format!("{base}/chat/completions"))?;
        let models = reqwest::Url::parse(&format!("{base}/models"))?;
        Ok(Self {
            config,
            client,
            completions,
            models,
            authorization,
        })
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(value) => builder.header(AUTHORIZATION, value.clone()),
            None => builder,
        }
    }

    /// A transport failure in the backend's terms: a body l2d cannot decode is INTERNAL,
    /// anything about the connection (its connect timeout included) UNAVAILABLE.
    fn transport_error(&self, e: &reqwest::Error) -> BackendError {
        let why = error_chain(e);
        if e.is_decode() {
            BackendError::Internal(format!(
                "{} sent a reply l2d cannot read: {why}",
                self.completions
            ))
        } else {
            BackendError::Unavailable(format!("cannot reach {}: {why}", self.completions))
        }
    }
}

/// An error and its sources, joined: reqwest's own message names only the URL.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A non-2xx reply in the backend's terms: overload and gateway errors are UNAVAILABLE (another
/// replica may answer), anything else INTERNAL; both with the server's own message.
fn status_error(status: reqwest::StatusCode, body: &str) -> BackendError {
    let message = server_message(body);
    let text = format!(
        "the model server answered HTTP {}: {message}",
        status.as_u16()
    );
    match status.as_u16() {
        408 | 429 | 502 | 503 | 504 => BackendError::Unavailable(text),
        _ => BackendError::Internal(text),
    }
}

/// The message of an error body: OpenAI's `{"error": {"message"}}`, a `{"detail"}` or
/// `{"message"}`, or the body itself, cut to 300 characters.
fn server_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        [
            v.pointer("/error/message"),
            v.get("error").filter(|e| e.is_string()),
            v.get("detail"),
            v.get("message"),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
    });
    let text = found.unwrap_or_else(|| body.trim().to_owned());
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None if text.is_empty() => "(no message)".into(),
        None => text,
    }
}

#[tonic::async_trait]
impl Model for OpenAiBackend {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn detail(&self) -> String {
        format!(
            "model {} at {}{}",
            self.config.model,
            self.config.url,
            self.config
                .api_key_env
                .as_ref()
                .map(|name| format!(", key from ${name}"))
                .unwrap_or_default()
        )
    }

    async fn answer(
        &self,
        query: &Query,
        time_left: Option<Duration>,
    ) -> Result<BackendAnswer, BackendError> {
        let limit = Limit::of(time_left, self.config.timeout);
        let prompt = render_prompt(&self.config.prompt, query.question(), query.context());
        let body = ChatRequest {
            model: &self.config.model,
            messages: [ChatMessage {
                role: "user",
                content: &prompt,
            }],
            temperature: 0.0,
            max_tokens: self.config.max_tokens,
        };
        let call = async {
            let reply = self
                .request(self.client.post(self.completions.clone()))
                .json(&body)
                .send()
                .await?;
            let status = reply.status();
            let text = reply.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        };
        // The whole call, body included, within the limit.
        let (status, text) = match tokio::time::timeout(limit.time, call).await {
            Err(_) => return Err(limit.expired(self.completions.as_str())),
            Ok(Err(e)) => return Err(self.transport_error(&e)),
            Ok(Ok(reply)) => reply,
        };
        if !status.is_success() {
            return Err(status_error(status, &text));
        }
        let reply: ChatResponse = serde_json::from_str(&text).map_err(|e| {
            BackendError::Internal(format!(
                "{} sent a reply that is not a chat completion: {e}",
                self.completions
            ))
        })?;
        let generated = reply
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .and_then(|m| m.content)
            .ok_or_else(|| {
                BackendError::Internal(format!(
                    "{} sent a chat completion without a message",
                    self.completions
                ))
            })?;
        let units = reply
            .usage
            .map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens))
            as f64;
        Ok(answer_from(
            align::align(query.context(), &generated, align::DEFAULT_MIN_F1),
            units,
        ))
    }

    fn has_readiness(&self) -> bool {
        true
    }

    async fn readiness(&self) -> Result<(), String> {
        let check = async {
            let reply = self
                .request(self.client.get(self.models.clone()))
                .send()
                .await
                .map_err(|e| format!("cannot reach {}: {}", self.models, error_chain(&e)))?;
            let status = reply.status();
            let body = reply.text().await.map_err(|e| error_chain(&e))?;
            if !status.is_success() {
                return Err(format!(
                    "{} answered HTTP {}: {}",
                    self.models,
                    status.as_u16(),
                    server_message(&body)
                ));
            }
            let list: ModelList = serde_json::from_str(&body)
                .map_err(|e| format!("{} sent no model list: {e}", self.models))?;
            if list.data.iter().any(|m| m.id == self.config.model) {
                return Ok(());
            }
            let listed: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
            Err(format!(
                "{} does not list model {:?} (it lists: {})",
                self.models,
                self.config.model,
                listed.join(", ")
            ))
        };
        tokio::time::timeout(READINESS_TIMEOUT, check)
            .await
            .unwrap_or_else(|_| Err(format!("{} did not answer in time", self.models)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_filled_in_one_pass() {
        assert_eq!(
            render_prompt(
                "Q: {question} C: {context} {other}",
                "who {context}?",
                "ctx"
            ),
            "Q: who {context}? C: ctx {other}"
        );
        assert!(OpenAiConfig::check_prompt(DEFAULT_PROMPT).is_ok());
        assert_eq!(
            OpenAiConfig::check_prompt("Question: {question}"),
            Err("the prompt template has no {context}".into())
        );
    }

    #[test]
    fn server_messages_are_read_from_the_usual_error_bodies() {
        let cases = [
            (
                r#"{"error": {"message": "context too long", "code": 400}}"#,
                "context too long",
            ),
            (r#"{"detail": "model not found"}"#, "model not found"),
            (r#"{"error": "overloaded"}"#, "overloaded"),
            ("upstream connect error", "upstream connect error"),
            ("", "(no message)"),
        ];
        for (body, message) in cases {
            assert_eq!(server_message(body), message, "{body}");
        }
        assert_eq!(server_message(&"x".repeat(400)).chars().count(), 301);
    }

    #[test]
    fn overload_is_unavailable_and_a_refusal_internal() {
        let busy = status_error(reqwest::StatusCode::SERVICE_UNAVAILABLE, "{}");
        assert!(matches!(busy, BackendError::Unavailable(_)), "{busy:?}");
        let refused = status_error(
            reqwest::StatusCode::BAD_REQUEST,
            r#"{"error": {"message": "bad"}}"#,
        );
        assert_eq!(
            refused,
            BackendError::Internal("the model server answered HTTP 400: bad".into())
        );
    }

    #[test]
    fn a_missing_key_variable_is_an_error_that_names_it() {
        let config = OpenAiConfig {
            url: reqwest::Url::parse("http://127.0.0.1:1/v1").unwrap(),
            model: "m".into(),
            api_key_env: Some("L2D_TEST_KEY_THAT_IS_NOT_SET".into()),
            prompt: DEFAULT_PROMPT.into(),
            max_tokens: 8,
            timeout: Duration::from_secs(1),
            max_concurrency: 1,
        };
        let error = OpenAiBackend::new(config).err().unwrap().to_string();
        assert!(error.contains("L2D_TEST_KEY_THAT_IS_NOT_SET"), "{error}");
    }
}
