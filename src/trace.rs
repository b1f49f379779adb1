//! Distributed traces: W3C trace context (`traceparent`, `tracestate`) accepted on
//! `Router.Ask` and carried to every expert call.
//!
//! - Off (the default): no span is made; a caller's trace context goes to the experts as it
//!   came, so an expert that traces continues the caller's trace. The cost is one metadata
//!   look-up per request.
//! - With `--otlp-endpoint URL`: each request is a server span (`l2d.v1.Router/Ask`, the
//!   caller's span its parent when it sent one, else a new trace) and each expert call a client
//!   span under it (`l2d.v1.Expert/Answer`, with the expert, the replica, the attempt number and
//!   the gRPC status; never the query's text), whose context goes to the expert. Spans are
//!   exported over OTLP/gRPC (TLS for an `https` endpoint, verified against the Web PKI roots)
//!   in batches from a background thread (the SDK's batch processor: every
//!   `OTEL_BSP_SCHEDULE_DELAY` ms, 5000 by default), and flushed at shutdown. Failed exports
//!   and dropped spans are logged by the SDK (target `opentelemetry_sdk`).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, KeyRef, MetadataKey, MetadataMap};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The span exporter of a process (see the module's doc).
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracing {
    /// Exports to the OTLP/gRPC receiver at `endpoint` (`http://collector:4317`) as service
    /// `service`. Call within the tokio runtime: the exporter's connection lives on it.
    pub fn otlp(endpoint: &str, service: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::WithExportConfig as _;
        let uri: http::Uri = endpoint
            .parse()
            .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            "--otlp-endpoint {endpoint:?}: give http://HOST:PORT or https://HOST:PORT"
        );
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint);
        if uri.scheme_str() == Some("https") {
            use opentelemetry_otlp::WithTonicConfig as _;
            builder = builder
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
        }
        let exporter = builder
            .build()
            .with_context(|| format!("cannot export traces to {endpoint}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("l2d");
        Ok(Self { provider, tracer })
    }

    /// Exports what is buffered and stops (blocks until the receiver answered or timed out).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot flush the last spans");
        }
    }
}

/// A request's trace: what goes with each of its expert calls.
pub enum RequestTrace {
    /// Not exported, and the caller sent no trace context.
    None,
    /// Not exported: the caller's trace context, passed on as it came.
    Forward {
        traceparent: AsciiMetadataValue,
        tracestate: Option<AsciiMetadataValue>,
    },
    /// Exported: the request's span, parent of its calls' spans.
    Span { cx: Context, tracer: SdkTracer },
}

impl RequestTrace {
    /// Starts the trace of a request from its metadata.
    pub fn start(tracing: Option<&Tracing>, metadata: &MetadataMap, request_id: &str) -> Self {
        let Some(tracing) = tracing else {
            static KEY: std::sync::LazyLock<tonic::metadata::MetadataKey<tonic::metadata::Ascii>> =
                std::sync::LazyLock::new(|| tonic::metadata::MetadataKey::from_static(TRACEPARENT));
            return match metadata.get(&*KEY) {
                Some(traceparent) => Self::Forward {
                    traceparent: traceparent.clone(),
                    tracestate: metadata.get(TRACESTATE).cloned(),
                },
                None => Self::None,
            };
        };
        let parent = TraceContextPropagator::new().extract(&Extract(metadata));
        let span = tracing
            .tracer
            .span_builder("l2d.v1.Router/Ask")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "l2d.v1.Router"),
                KeyValue::new("rpc.method", "Ask"),
                KeyValue::new("l2d.request_id", request_id.to_owned()),
            ])
            .start_with_context(&tracing.tracer, &parent);
        Self::Span {
            cx: parent.with_span(span),
            tracer: tracing.tracer.clone(),
        }
    }

    /// Whether spans are made (and calls numbered for them).
    pub fn exports(&self) -> bool {
        matches!(self, Self::Span { .. })
    }

    /// The span of one expert call (attempt number `attempt` at this expert, from 1), whose
    /// trace context is put in the call's `metadata`.
    pub fn call(
        &self,
        expert: &str,
        replica: &str,
        attempt: u32,
        metadata: &mut MetadataMap,
    ) -> CallSpan {
        match self {
            Self::None => CallSpan(None),
            Self::Forward {
                traceparent,
                tracestate,
            } => {
                metadata.insert(TRACEPARENT, traceparent.clone());
                if let Some(state) = tracestate {
                    metadata.insert(TRACESTATE, state.clone());
                }
                CallSpan(None)
            }
            Self::Span { cx, tracer } => {
                let span = tracer
                    .span_builder("l2d.v1.Expert/Answer")
                    .with_kind(SpanKind::Client)
                    .with_attributes([
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", "l2d.v1.Expert"),
                        KeyValue::new("rpc.method", "Answer"),
                        KeyValue::new("l2d.expert", expert.to_owned()),
                        KeyValue::new("l2d.replica", replica.to_owned()),
                        KeyValue::new("l2d.attempt", i64::from(attempt)),
                    ])
                    .start_with_context(tracer, cx);
                let cx = cx.with_span(span);
                TraceContextPropagator::new().inject_context(&cx, &mut Inject(metadata));
                CallSpan(Some(cx))
            }
        }
    }

    /// Ends the request's span with its status (and the expert that answered).
    pub fn end(self, code: Code, answered_by: Option<&str>) {
        if let Self::Span { cx, .. } = self {
            let span = cx.span();
            if let Some(expert) = answered_by {
                span.set_attribute(KeyValue::new("l2d.answered_by", expert.to_owned()));
            }
            finish(&cx, code);
        }
    }
}

/// An expert call's span (none when not exported).
pub struct CallSpan(Option<Context>);

impl CallSpan {
    pub fn end(self, code: Code) {
        if let Some(cx) = self.0 {
            finish(&cx, code);
        }
    }
}

fn finish(cx: &Context, code: Code) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if code != Code::Ok {
        span.set_status(Status::error(crate::grpc::status::code_name(code)));
    }
    span.end();
}

struct Extract<'a>(&'a MetadataMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct Inject<'a>(&'a mut MetadataMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_export_the_callers_context_goes_to_the_experts_unchanged() {
        let mut incoming = MetadataMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        incoming.insert(TRACEPARENT, parent.parse().unwrap());
        incoming.insert(TRACESTATE, "vendor=1".parse().unwrap());
        let trace = RequestTrace::start(None, &incoming, "r1");
        let mut call = MetadataMap::new();
        trace
            .call("bert", "127.0.0.1:1", 1, &mut call)
            .end(Code::Ok);
        assert_eq!(call.get(TRACEPARENT).unwrap(), parent);
        assert_eq!(call.get(TRACESTATE).unwrap(), "vendor=1");
        // No context, nothing sent.
        let mut call = MetadataMap::new();
        RequestTrace::start(None, &MetadataMap::new(), "r2").call("bert", "a", 1, &mut call);
        assert!(call.is_empty());
    }

    #[test]
    fn an_endpoint_that_is_not_an_http_url_is_refused_with_the_flag_named() {
        for bad in ["collector:4317", "ftp://collector:4317", "http://"] {
            let error = Tracing::otlp(bad, "l2d-scheduler")
                .err()
                .unwrap()
                .to_string();
            assert!(error.starts_with("--otlp-endpoint"), "{bad}: {error}");
        }
    }
}
