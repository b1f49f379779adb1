//! The `kserve` backend: an extractive QA model behind the Open Inference Protocol over gRPC
//! ("KServe V2": Triton, KServe, MLServer, OpenVINO Model Server).
//!
//! Each query is one `ModelInfer` call with two BYTES input tensors of shape [1], `question` and
//! `context`, sent as raw contents (as Triton's own clients send them). The model answers with a BYTES output `answer` and, optionally, INT64 (or INT32)
//! outputs `start` and `end`, code-point offsets into the context. Replies in typed `contents`
//! and in `raw_output_contents` are both read, with shapes [1] or [1, 1]. A span that does not
//! hold the answer's text is found again by [`super::align`], and an answer the context does not
//! hold becomes "no answer". The model is ready while `ServerReady` and `ModelReady` say so.
//! One HTTP/2 connection per backend carries every call.

use super::align::{self, Aligned, Match};
use super::{BackendAnswer, BackendError, Limit, Model, answer_from};
use crate::core::query::Query;
use crate::grpc::inference::{
    ModelInferRequest, ModelInferResponse, ModelReadyRequest, ServerReadyRequest,
    grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
};
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// How long a readiness check may take.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// The `kserve` backend's settings, as the pool file gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct KServeConfig {
    /// The server's gRPC address as a URL, e.g. `http://triton:8001`.
    pub url: String,
    pub model: String,
    /// Empty: the server's choice.
    pub version: String,
    /// The longest a call may take (cut to the caller's deadline).
    pub timeout: Duration,
}

impl KServeConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Checks the URL: `http://host:port` or `https://host:port`, nothing else (no user or
    /// password, no path).
    pub fn check_url(url: &str) -> Result<(), String> {
        let parsed = url
            .parse::<http::Uri>()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let plain = matches!(parsed.scheme_str(), Some("http" | "https"))
            && parsed
                .authority()
                .is_some_and(|a| a.port().is_some() && !a.as_str().contains('@'))
            && matches!(
                parsed.path_and_query().map(|p| p.as_str()),
                None | Some("/")
            );
        if plain {
            Ok(())
        } else {
            Err(format!(
                "{url:?} must be http://host:port or https://host:port"
            ))
        }
    }
}

pub struct KServeBackend {
    config: KServeConfig,
    client: GrpcInferenceServiceClient<Channel>,
    /// The expert's declared cost: what one call spends.
    units: f64,
}

impl KServeBackend {
    /// A client for `config`, connecting when first used (and again after a failure).
    pub fn new(config: KServeConfig, units: f64) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(config.url.clone())?
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if config.url.starts_with("https://") {
            endpoint = endpoint.tls_config(ClientTlsConfig::new().with_webpki_roots())?;
        }
        let client = GrpcInferenceServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES);
        Ok(Self {
            config,
            client,
            units,
        })
    }

    fn status_error(&self, status: &Status, limit: Limit) -> BackendError {
        let text = format!(
            "the inference server at {} answered {:?}: {}",
            self.config.url,
            status.code(),
            status.message()
        );
        // The call's own timer (the request's grpc-timeout) ran out before an answer came.
        let timed_out = error_sources(status).any(|e| e.is::<tonic::TimeoutExpired>());
        match status.code() {
            _ if timed_out => {
                limit.expired(&format!("the inference server at {}", self.config.url))
            }
            // The server's own deadline (a queue timeout, say) with the caller's time left.
            Code::DeadlineExceeded if !limit.callers => BackendError::Unavailable(text),
            // The server ended the call at the caller's deadline, which it was sent as the
            // request's grpc-timeout: the same end as the call's own timer, whichever fired
            // first, and said the same way.
            Code::DeadlineExceeded => {
                limit.expired(&format!("the inference server at {}", self.config.url))
            }
            Code::Unavailable | Code::ResourceExhausted => BackendError::Unavailable(text),
            // tonic's own report of a connection that failed under the call.
            Code::Cancelled | Code::Unknown if std::error::Error::source(status).is_some() => {
                BackendError::Unavailable(format!(
                    "cannot reach the inference server at {}: {}",
                    self.config.url,
                    status.message()
                ))
            }
            _ => BackendError::Internal(text),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        let mut client = self.client.clone();
        let unreachable = |s: Status| {
            format!(
                "cannot ask the inference server at {}: {:?}: {}",
                self.config.url,
                s.code(),
                s.message()
            )
        };
        let server = client
            .server_ready(ServerReadyRequest {})
            .await
            .map_err(unreachable)?;
        if !server.into_inner().ready {
            return Err(format!(
                "the inference server at {} is not ready",
                self.config.url
            ));
        }
        let model = client
            .model_ready(ModelReadyRequest {
                name: self.config.model.clone(),
                version: self.config.version.clone(),
            })
            .await
            .map_err(unreachable)?;
        if !model.into_inner().ready {
            return Err(format!(
                "model {:?} is not ready on {}",
                self.config.model, self.config.url
            ));
        }
        Ok(())
    }
}

/// A BYTES input of one element, described; its contents go raw ([`raw_bytes`]).
/// An error's sources, nearest first.
fn error_sources<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |e| e.source())
}

fn bytes_input(name: &str) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        parameters: Default::default(),
        contents: None,
    }
}

/// One BYTES element in the raw form: a 4-byte little-endian length, then the bytes.
fn raw_bytes(value: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(4 + value.len());
    raw.extend_from_slice(&(value.len() as u32).to_le_bytes());
    raw.extend_from_slice(value.as_bytes());
    raw
}

/// What a reply says: the answer and, if the model gave them, its offsets.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub answer: String,
    pub span: Option<(i64, i64)>,
}

/// Reads `answer` (and `start`, `end`) from a reply, typed or raw.
pub fn read_reply(reply: &ModelInferResponse) -> Result<Reply, String> {
    let answer = Output::find(reply, "answer")?
        .ok_or("the reply has no output named answer")?
        .bytes()?;
    let answer = String::from_utf8(answer).map_err(|_| "the answer is not UTF-8".to_owned())?;
    let start = Output::find(reply, "start")?
        .map(|o| o.integer())
        .transpose()?;
    let end = Output::find(reply, "end")?
        .map(|o| o.integer())
        .transpose()?;
    Ok(Reply {
        answer,
        span: start.zip(end),
    })
}

/// One output tensor of a reply and its raw contents, if the reply is raw.
struct Output<'a> {
    tensor: &'a InferOutputTensor,
    raw: Option<&'a [u8]>,
}

impl<'a> Output<'a> {
    fn find(reply: &'a ModelInferResponse, name: &str) -> Result<Option<Self>, String> {
        let Some(index) = reply.outputs.iter().position(|o| o.name == name) else {
            return Ok(None);
        };
        let tensor = &reply.outputs[index];
        let elements = tensor
            .shape
            .iter()
            .try_fold(1i64, |n, &d| (d >= 0).then(|| n.checked_mul(d)).flatten());
        if elements != Some(1) {
            return Err(format!(
                "output {name} has shape {:?}; l2d reads one element ([1] or [1, 1])",
                tensor.shape
            ));
        }
        let raw = if reply.raw_output_contents.is_empty() {
            None
        } else {
            let raw = reply.raw_output_contents.get(index).ok_or_else(|| {
                format!("the reply's raw contents have no entry for output {name}")
            })?;
            Some(raw.as_slice())
        };
        Ok(Some(Self { tensor, raw }))
    }

    fn name(&self) -> &str {
        &self.tensor.name
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        if self.tensor.datatype != "BYTES" {
            return Err(format!(
                "output {} is {}, not BYTES",
                self.name(),
                self.tensor.datatype
            ));
        }
        match self.raw {
            // One element: a 4-byte little-endian length, then the bytes.
            Some(raw) => {
                let (length, rest) = raw
                    .split_first_chunk::<4>()
                    .ok_or_else(|| format!("raw output {} is too short", self.name()))?;
                let length = u32::from_le_bytes(*length) as usize;
                if rest.len() != length {
                    return Err(format!(
                        "raw output {} announces {length} bytes and holds {}",
                        self.name(),
                        rest.len()
                    ));
                }
                Ok(rest.to_vec())
            }
            None => self
                .tensor
                .contents
                .as_ref()
                .and_then(|c| c.bytes_contents.first())
                .cloned()
                .ok_or_else(|| format!("output {} has no contents", self.name())),
        }
    }

    fn integer(&self) -> Result<i64, String> {
        let typed = self.tensor.contents.as_ref();
        let value = match (self.tensor.datatype.as_str(), self.raw) {
            ("INT64", Some(raw)) => <[u8; 8]>::try_from(raw).ok().map(i64::from_le_bytes),
            ("INT32", Some(raw)) => <[u8; 4]>::try_from(raw)
                .ok()
                .map(|b| i64::from(i32::from_le_bytes(b))),
            ("INT64", None) => typed.and_then(|c| c.int64_contents.first().copied()),
            ("INT32", None) => typed.and_then(|c| c.int_contents.first().map(|&v| i64::from(v))),
            (other, _) => {
                return Err(format!(
                    "output {} is {other}, not INT64 or INT32",
                    self.name()
                ));
            }
        };
        value.ok_or_else(|| format!("output {} holds no integer", self.name()))
    }
}

/// The model's span when it holds the answer's text; otherwise the answer aligned to the
/// context; `None` when the context does not hold it.
fn place(context: &str, reply: &Reply) -> Option<Aligned> {
    if reply.answer.trim().is_empty() {
        return None;
    }
    if let Some((start, end)) = reply.span
        && 0 <= start
        && start < end
        && end <= i64::from(u32::MAX)
    {
        let text: String = context
            .chars()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect();
        // The whole span lies in the context and holds exactly the answer.
        if text.chars().count() as i64 == end - start && text == reply.answer {
            return Some(Aligned {
                start: start as u32,
                end: end as u32,
                text,
                how: Match::Exact,
            });
        }
    }
    align::align(context, &reply.answer, align::DEFAULT_MIN_F1)
}

#[tonic::async_trait]
impl Model for KServeBackend {
    fn kind(&self) -> &'static str {
        "kserve"
    }

    fn detail(&self) -> String {
        match self.config.version.as_str() {
            "" => format!("model {} at {}", self.config.model, self.config.url),
            version => format!(
                "model {} version {version} at {}",
                self.config.model, self.config.url
            ),
        }
    }

    async fn answer(
        &self,
        query: &Query,
        time_left: Option<Duration>,
    ) -> Result<BackendAnswer, BackendError> {
        let limit = Limit::of(time_left, self.config.timeout);
        let mut request = tonic::Request::new(ModelInferRequest {
            model_name: self.config.model.clone(),
            model_version: self.config.version.clone(),
            inputs: vec![bytes_input("question"), bytes_input("context")],
            raw_input_contents: vec![raw_bytes(query.question()), raw_bytes(query.context())],
            ..Default::default()
        });
        request.set_timeout(limit.time);
        let mut client = self.client.clone();
        let reply = match tokio::time::timeout(limit.time, client.model_infer(request)).await {
            Err(_) => {
                return Err(limit.expired(&format!("the inference server at {}", self.config.url)));
            }
            Ok(Err(status)) => return Err(self.status_error(&status, limit)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let reply = read_reply(&reply).map_err(|why| {
            BackendError::Internal(format!(
                "model {} at {}: {why}",
                self.config.model, self.config.url
            ))
        })?;
        Ok(answer_from(place(query.context(), &reply), self.units))
    }

    fn has_readiness(&self) -> bool {
        true
    }

    async fn readiness(&self) -> Result<(), String> {
        tokio::time::timeout(READINESS_TIMEOUT, self.ready())
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the inference server at {} did not answer in time",
                    self.config.url
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::inference::InferTensorContents;

    #[tokio::test]
    async fn the_servers_deadline_exceeded_at_the_callers_deadline_is_the_callers() {
        let backend = KServeBackend::new(
            KServeConfig {
                url: "http://127.0.0.1:9".into(),
                model: "qa".into(),
                version: String::new(),
                timeout: KServeConfig::DEFAULT_TIMEOUT,
            },
            1.0,
        )
        .unwrap();
        let callers = Limit {
            time: Duration::from_millis(300),
            callers: true,
        };
        // The server enforced the grpc-timeout it was sent: said as the call's own timer says it.
        let server_first = Status::deadline_exceeded("Deadline Exceeded");
        match backend.status_error(&server_first, callers) {
            BackendError::DeadlineExceeded(m) => assert!(m.contains("caller's deadline"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The server's own deadline with the caller's time left: another replica may answer.
        let own = Limit {
            callers: false,
            ..callers
        };
        assert!(matches!(
            backend.status_error(&server_first, own),
            BackendError::Unavailable(_)
        ));
    }

    fn output(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferOutputTensor {
        InferOutputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    fn typed(shape: &[i64]) -> ModelInferResponse {
        ModelInferResponse {
            outputs: vec![
                output(
                    "answer",
                    "BYTES",
                    shape,
                    Some(InferTensorContents {
                        bytes_contents: vec!["Zürich".into()],
                        ..Default::default()
                    }),
                ),
                output(
                    "start",
                    "INT64",
                    shape,
                    Some(InferTensorContents {
                        int64_contents: vec![3],
                        ..Default::default()
                    }),
                ),
                output(
                    "end",
                    "INT32",
                    shape,
                    Some(InferTensorContents {
                        int_contents: vec![9],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn typed_replies_of_shape_one_and_one_by_one_are_read() {
        for shape in [&[1][..], &[1, 1]] {
            assert_eq!(
                read_reply(&typed(shape)),
                Ok(Reply {
                    answer: "Zürich".into(),
                    span: Some((3, 9)),
                })
            );
        }
    }

    #[test]
    fn raw_replies_are_read_with_their_length_prefixes() {
        let mut reply = typed(&[1, 1]);
        for o in &mut reply.outputs {
            o.contents = None;
        }
        reply.raw_output_contents = vec![
            raw_bytes("Zürich"),
            3i64.to_le_bytes().to_vec(),
            9i32.to_le_bytes().to_vec(),
        ];
        assert_eq!(
            read_reply(&reply),
            Ok(Reply {
                answer: "Zürich".into(),
                span: Some((3, 9)),
            })
        );
        // A length prefix that does not match the bytes is an error, not a cut answer.
        reply.raw_output_contents[0] = [&10u32.to_le_bytes()[..], b"short"].concat();
        assert_eq!(
            read_reply(&reply),
            Err("raw output answer announces 10 bytes and holds 5".into())
        );
    }

    #[test]
    fn replies_l2d_cannot_read_are_errors_that_say_why() {
        let mut reply = typed(&[2]);
        assert!(read_reply(&reply).unwrap_err().contains("shape [2]"));
        // Negative dimensions are not "one element", and huge ones do not overflow.
        for shape in [&[-1, -1][..], &[i64::MAX, i64::MAX, 2]] {
            assert!(
                read_reply(&typed(shape)).unwrap_err().contains("shape"),
                "{shape:?}"
            );
        }
        reply = typed(&[1]);
        reply.outputs[0].datatype = "FP32".into();
        assert_eq!(
            read_reply(&reply),
            Err("output answer is FP32, not BYTES".into())
        );
        reply.outputs.remove(0);
        assert_eq!(
            read_reply(&reply),
            Err("the reply has no output named answer".into())
        );
        // Offsets are optional.
        let mut only_answer = typed(&[1]);
        only_answer.outputs.truncate(1);
        assert_eq!(read_reply(&only_answer).unwrap().span, None);
    }

    #[test]
    fn a_span_is_kept_when_it_holds_the_answer_and_found_again_when_not() {
        let context = "In Zürich, Switzerland.";
        let reply = |answer: &str, span| Reply {
            answer: answer.into(),
            span,
        };
        assert_eq!(
            place(context, &reply("Zürich", Some((3, 9))))
                .unwrap()
                .start,
            3
        );
        // Byte offsets (3..10) instead of code points: the text is found where it is.
        let moved = place(context, &reply("Zürich", Some((3, 10)))).unwrap();
        assert_eq!(
            (moved.start, moved.end, moved.text.as_str()),
            (3, 9, "Zürich")
        );
        assert_eq!(place(context, &reply("Geneva", None)), None);
        // A span past the end of the context is not kept, even if what it cuts holds the text.
        let past = place(context, &reply("Switzerland.", Some((11, 99)))).unwrap();
        assert_eq!(
            (past.start, past.end, past.text.as_str()),
            (11, 22, "Switzerland")
        );
        assert_eq!(place(context, &reply("", Some((0, 0)))), None);
    }
}
