//! What every l2d node serves besides its own services: gRPC health (`grpc.health.v1`),
//! reflection (v1 and v1alpha), a graceful stop, and the limits that keep one client from
//! exhausting the process. Servers start from an already-bound listener and a shutdown future,
//! so tests bind `127.0.0.1:0` and stop them cleanly.
//!
//! # Limits before work
//!
//! Every listener counts its connections (beyond [`ServerLimits::max_connections`] a new one is
//! closed at once), and every connection is HTTP/2 with bounded concurrent streams, bounded
//! header lists, a cap on streams a client resets before the server sees them (the "rapid
//! reset" attack), small flow-control windows (what a connection can make the server buffer
//! unread), keepalive pings that close a connection whose peer went silent, a maximum age after
//! which the client is asked to reconnect, and a timeout on each request. Across connections, at
//! most [`ServerLimits::max_calls_in_service`] calls are served at once (one more is refused at
//! once with RESOURCE_EXHAUSTED, before its body is read), and a request's body must arrive
//! within [`ServerLimits::body_timeout`]. TLS handshakes run off the accept loop, each with a
//! timeout. A node that guards some calls with credentials passes an [`Authorize`]: it runs on
//! the request's headers, before the body is read or decoded.
//!
//! What that bounds: a call's body is buffered only while the call is in service, and is at
//! most the service's message limit; data a client sends beyond that waits in the connection's
//! flow-control window. Memory held for clients is therefore at most about
//! `max_calls_in_service × message limit + max_connections × connection window` (with the
//! defaults and `Router.Ask`'s 264 KiB limit: 256 × 264 KiB + 512 × 256 KiB ≈ 194 MiB), whatever
//! the clients do.

use super::tls::ServerTls;
use crate::core::error_kind::Refusal;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Health, reflection v1 and reflection v1alpha, ready to be joined by a node's own services;
/// and the health service alone (for [`serve_health`]).
pub fn standard_routes() -> anyhow::Result<(HealthReporter, Routes, Routes)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    let health_only = Routes::new(health.clone());
    let routes = Routes::new(health).add_service(v1).add_service(v1alpha);
    Ok((reporter, routes, health_only))
}

/// Per-listener and per-connection limits. The defaults suit a node with a few hundred MiB of
/// memory: see RELIABILITY.md (security) for what they bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// Connections open at once on one listener; one more is closed on accept.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// the same number bounds the calls one connection has in service.
    pub max_concurrent_streams: u32,
    /// Bytes of headers one request may carry (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server accepts them, per connection.
    pub max_pending_reset_streams: usize,
    /// Calls in service at once across every connection; health checks are not counted.
    pub max_calls_in_service: usize,
    /// Unread bytes a connection, and one of its streams, may send ahead (HTTP/2 windows).
    pub connection_window_bytes: u32,
    pub stream_window_bytes: u32,
    /// Longest a request's body may take to arrive, from its headers.
    pub body_timeout: Duration,
    /// Longest a request may take from its headers to its answer, body included (a caller's
    /// shorter `grpc-timeout` wins).
    pub request_timeout: Duration,
    /// HTTP/2 ping interval, and how long a ping may go unanswered before the connection closes.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// After this, the server sends GOAWAY and the client reconnects (spreads clients over new
    /// replicas, bounds a connection's lifetime); calls in flight get the grace period.
    pub max_connection_age: Duration,
    pub max_connection_age_grace: Duration,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl ServerLimits {
    /// Concurrent streams one connection may carry by default.
    pub const DEFAULT_STREAMS: u32 = 128;
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_concurrent_streams: Self::DEFAULT_STREAMS,
            max_header_list_bytes: 16 * 1024,
            max_pending_reset_streams: 32,
            max_calls_in_service: 256,
            connection_window_bytes: 256 * 1024,
            stream_window_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Who called, as an [`Authorize`] established it from the request's headers (or its client
/// certificate); handlers read it from the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The credential's name, the certificate identity, or "anonymous" where no credential is
    /// needed.
    pub name: String,
}

/// Decides on a request's headers, before its body is read: `Ok(Some(caller))` lets it through
/// with the caller attached, `Ok(None)` lets it through as is, `Err` answers with that status.
pub trait Authorize: Send + Sync + 'static {
    fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Caller>, Refusal>;
}

/// The connection and in-service slots of a node, shared by all its listeners (the scheduler's
/// Router, Pool and health ports) so the bounds hold for the process, not per port.
pub struct Budget {
    connections: Arc<Semaphore>,
    in_service: Arc<Semaphore>,
}

impl Budget {
    pub fn new(limits: &ServerLimits) -> Arc<Self> {
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            in_service: Arc::new(Semaphore::new(limits.max_calls_in_service.max(1))),
        })
    }
}

/// How a node serves, beyond its services.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// After the stop signal: report NOT_SERVING, keep serving this long, then drain.
    pub drain_delay: Duration,
    /// TLS (and, with a client CA, mutual TLS) on the listener; plain HTTP/2 without.
    pub tls: Option<Arc<ServerTls>>,
    pub limits: ServerLimits,
    /// Checks credentials on headers (none: every call is let through).
    pub authorize: Option<Arc<dyn Authorize>>,
    /// Slots shared with the node's other listeners (none: this listener's own, from `limits`).
    pub budget: Option<Arc<Budget>>,
    /// Whether what the node serves is ready (e.g. the model server behind an expert): the
    /// health status follows it until the stop signal. None: serving from the start.
    pub readiness: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Marks `services` (and the whole server, the empty name) as serving (or as `readiness` says,
/// following its changes), runs the server until `shutdown` completes, then marks them not serving, keeps accepting calls for `drain_delay`
/// (so load balancers and Kubernetes endpoints see the change before the listener closes), and
/// drains the calls in flight.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    reporter: HealthReporter,
    services: &[&str],
    shutdown: impl Future<Output = ()> + Send,
    options: &ServeOptions,
) -> anyhow::Result<()> {
    let names: Vec<String> = std::iter::once("")
        .chain(services.iter().copied())
        .map(str::to_owned)
        .collect();
    let set_all = |reporter: HealthReporter, names: Vec<String>, serving: bool| async move {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in &names {
            reporter.set_service_status(name, status).await;
        }
    };
    let follow = match options.readiness.clone() {
        None => {
            set_all(reporter.clone(), names.clone(), true).await;
            None
        }
        Some(mut ready) => {
            let serving = *ready.borrow_and_update();
            set_all(reporter.clone(), names.clone(), serving).await;
            let (reporter, names) = (reporter.clone(), names.clone());
            Some(tokio::spawn(async move {
                while ready.changed().await.is_ok() {
                    let serving = *ready.borrow_and_update();
                    set_all(reporter.clone(), names.clone(), serving).await;
                }
            }))
        }
    };
    let drain_delay = options.drain_delay;
    let drain = async move {
        shutdown.await;
        if let Some(follow) = follow {
            follow.abort();
            let _ = follow.await;
        }
        set_all(reporter, names, false).await;
        if !drain_delay.is_zero() {
            tracing::info!(
                delay_ms = drain_delay.as_millis() as u64,
                "not serving; draining after the delay"
            );
            tokio::time::sleep(drain_delay).await;
        }
    };
    serve_routes(listener, routes, drain, options).await
}

/// Serves `routes` on `listener` with `options`' limits, TLS and authorization until `stop`.
pub async fn serve_routes(
    listener: TcpListener,
    routes: Routes,
    stop: impl Future<Output = ()> + Send,
    options: &ServeOptions,
) -> anyhow::Result<()> {
    let limits = options.limits;
    let budget = options
        .budget
        .clone()
        .unwrap_or_else(|| Budget::new(&limits));
    let guard = GuardLayer {
        authorize: options.authorize.clone(),
        in_service: budget.in_service.clone(),
        limit: limits.max_calls_in_service.max(1),
        body_timeout: limits.body_timeout,
    };
    let mut server = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .concurrency_limit_per_connection(limits.max_concurrent_streams as usize)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.max_connection_age_grace)
        .initial_connection_window_size(limits.connection_window_bytes)
        .initial_stream_window_size(limits.stream_window_bytes)
        .layer(guard);
    let router = server.add_routes(routes);
    match options.tls.clone() {
        None => {
            let slots = budget.connections.clone();
            let incoming = accept(
                listener,
                slots,
                limits,
                |stream| async move { Some(stream) },
            );
            router.serve_with_incoming_shutdown(incoming, stop).await?;
        }
        Some(tls) => {
            let slots = budget.connections.clone();
            let incoming = accept(listener, slots, limits, move |stream| {
                let handshake = tls.acceptor().accept(stream);
                async move {
                    match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                        Ok(Ok(tls)) => Some(tls),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            None
                        }
                    }
                }
            });
            router.serve_with_incoming_shutdown(incoming, stop).await?;
        }
    }
    Ok(())
}

/// A connection holding one of its listener's connection slots until it closes.
pub struct Counted<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    /// Says no, whatever the connection can do, so that a unary reply leaves in one write.
    ///
    /// h2 copies a DATA frame into its write buffer only below a threshold: 256 bytes when the
    /// transport writes vectored, 1 KiB when it does not. A larger frame is held aside and
    /// nothing can be buffered behind it until it is written, so the reply's trailers (which
    /// the client waits for: they carry the status) go in a second write call: a second system
    /// call and TCP segment. A scheduler's reply (the answer and its decision) is usually a few
    /// hundred bytes: over the first threshold, under the second. A DATA frame of 1 KiB or more
    /// is still held aside and, without vectored writes, written in two calls instead of one,
    /// so such a reply takes three writes instead of two (a large `ListPool`, reflection's
    /// descriptors).
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` while the returned stream is alive: each takes a slot of
/// `limits.max_connections` (none free: closed at once) and goes through `handshake` in its own
/// task (TLS: with a timeout), so a slow client cannot hold the accept loop.
fn accept<IO, F, Fut>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ServerLimits,
    handshake: F,
) -> impl futures_util::Stream<Item = Result<Counted<IO>, std::io::Error>>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Counted<IO>>(64);
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        limit = limits.max_connections,
                        refused,
                        "connection limit reached; closing new connections"
                    );
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let ready = handshake(stream);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(io) = ready.await {
                    let _ = tx.send(Counted { io, _slot: slot }).await;
                }
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|io| (Ok(io), rx))
    })
}

/// Re-reads `tls`'s files every `every` while the process runs; a change applies to new
/// connections, a bad file is logged and the previous configuration stays.
pub async fn watch_tls(tls: Arc<ServerTls>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let t = tls.clone();
        match tokio::task::spawn_blocking(move || t.reload()).await {
            Ok(Ok(true)) => {
                tracing::info!("TLS certificate reloaded");
                last_error.clear();
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                if e != last_error {
                    tracing::error!(error = %e, "TLS reload failed; the previous certificate stays");
                    last_error = e;
                }
            }
        }
    }
}

/// On every request, before its body is read: the [`Authorize`] check, a slot of the calls in
/// service (health checks excepted), and the body's deadline.
#[derive(Clone)]
struct GuardLayer {
    authorize: Option<Arc<dyn Authorize>>,
    in_service: Arc<Semaphore>,
    limit: usize,
    body_timeout: Duration,
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    guard: GuardLayer,
}

type BoxedResponse<R, E> =
    Pin<Box<dyn Future<Output = Result<http::Response<R>, E>> + Send + 'static>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Guarded<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxedResponse<tonic::body::Body, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let refuse = |status: Status| -> Self::Future {
            Box::pin(futures_util::future::ready(Ok(status.into_http())))
        };
        let guard = &self.guard;
        if let Some(authorize) = &guard.authorize {
            match authorize.authorize(
                request.uri().path(),
                request.headers(),
                request.extensions(),
            ) {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(refusal) => return refuse(refusal.into()),
            }
        }
        let permit = if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            None
        } else {
            match guard.in_service.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return refuse(super::status::resource_exhausted(
                        format!(
                            "this node is serving its limit of {} calls; retry shortly",
                            guard.limit
                        ),
                        Duration::from_millis(100),
                    ));
                }
            }
        };
        let timeout = guard.body_timeout;
        let request = request.map(|body| tonic::body::Body::new(BodyDeadline::new(body, timeout)));
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response.map(|response| {
                over_limit_is_exhausted(response)
                    .map(|body| tonic::body::Body::new(OverLimitTrailers { inner: body }))
            })
        })
    }
}

/// tonic refuses a request message over the decoding limit with OUT_OF_RANGE; gRPC's status
/// code guide says RESOURCE_EXHAUSTED for a message over a size limit. The refusal is a
/// trailers-only response, so its status is in the headers, rewritten here (a client may not
/// retry it as it is: the limit does not change).
fn over_limit_is_exhausted<R>(mut response: http::Response<R>) -> http::Response<R> {
    rewrite_over_limit(response.headers_mut());
    response
}

/// The same rewrite on a status in trailers (tonic's unary handler reports a decoding error
/// there, after the response headers).
struct OverLimitTrailers {
    inner: tonic::body::Body,
}

impl http_body::Body for OverLimitTrailers {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite_over_limit(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn rewrite_over_limit(headers: &mut http::HeaderMap) {
    const TONIC: &str = "Error, decoded message length too large: ";
    // Every response passes here: only an OUT_OF_RANGE is parsed.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    if headers.get(GRPC_STATUS).is_none_or(|code| code != "11") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != tonic::Code::OutOfRange {
        return;
    }
    let Some(detail) = status.message().strip_prefix(TONIC) else {
        return;
    };
    // "found N bytes, the limit is: M bytes"
    let numbers: Vec<&str> = detail
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    let message = match numbers[..] {
        [found, limit] => format!(
            "the request message of {found} bytes is over this server's limit of {limit} bytes"
        ),
        _ => format!("the request message is over this server's size limit ({detail})"),
    };
    let _ = Status::resource_exhausted(message).add_header(headers);
}

/// A request body that must end within a time from when the server first waits for it: a
/// client that starts a call and trickles (or never finishes) its body cannot hold a slot for
/// longer. The timer is made on that first wait, so a body that is already there when it is
/// read (nearly every unary call: its one frame comes with the headers) costs none.
struct BodyDeadline {
    inner: tonic::body::Body,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

impl BodyDeadline {
    fn new(inner: tonic::body::Body, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: None,
            timeout,
        }
    }
}

impl http_body::Body for BodyDeadline {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "the request body did not arrive within {} ms",
                self.timeout.as_millis()
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves only `grpc.health.v1` (the `health_only` routes of [`standard_routes`]), in plain
/// HTTP/2, on `listener`: for probes that cannot speak TLS (the kubelet's gRPC probes) beside a
/// TLS listener. The states are the main server's, drain included.
/// `options`' limits and budget apply; its TLS and authorization do not.
pub async fn serve_health(
    listener: TcpListener,
    health_only: Routes,
    stop: impl Future<Output = ()> + Send,
    options: &ServeOptions,
) -> anyhow::Result<()> {
    let options = ServeOptions {
        limits: options.limits,
        budget: options.budget.clone(),
        ..ServeOptions::default()
    };
    serve_routes(listener, health_only, stop, &options).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: what a process waits for before draining.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT, shutting down"),
        () = terminate => tracing::info!("received SIGTERM, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A TCP connection that counts the write calls that wrote something.
    struct CountingWrites {
        tcp: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountingWrites {
        fn count(&self, written: &Poll<std::io::Result<usize>>) {
            if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl Connected for CountingWrites {
        type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

        fn connect_info(&self) -> Self::ConnectInfo {
            self.tcp.connect_info()
        }
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.tcp).poll_write(cx, buf);
            self.count(&written);
            written
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
            self.count(&written);
            written
        }

        fn is_write_vectored(&self) -> bool {
            self.tcp.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// Answers every question with `text`.
    struct Fixed {
        text: String,
    }

    #[tonic::async_trait]
    impl pb::expert_server::Expert for Fixed {
        async fn answer(
            &self,
            _request: tonic::Request<pb::AnswerRequest>,
        ) -> Result<tonic::Response<pb::AnswerResponse>, Status> {
            Ok(tonic::Response::new(pb::AnswerResponse {
                text: self.text.clone(),
                ..Default::default()
            }))
        }

        async fn describe(
            &self,
            _request: tonic::Request<pb::DescribeRequest>,
        ) -> Result<tonic::Response<pb::DescribeResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    /// The server's write calls for one unary call answering `bytes` bytes of text, over one
    /// [`Counted`] TCP connection on loopback (after a first call, which also carries the
    /// connection's settings).
    async fn writes_for_a_reply_of(bytes: usize) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = writes.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let connection = Counted {
                io: CountingWrites {
                    tcp,
                    writes: counted,
                },
                _slot: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            };
            use futures_util::StreamExt as _;
            let incoming = futures_util::stream::iter([Ok::<_, std::io::Error>(connection)])
                .chain(futures_util::stream::pending());
            Server::builder()
                .add_service(pb::expert_server::ExpertServer::new(Fixed {
                    text: "x".repeat(bytes),
                }))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        let mut client = pb::expert_client::ExpertClient::new(channel);
        let ask = || pb::AnswerRequest {
            question: "q".into(),
            ..Default::default()
        };
        let first = client.answer(ask()).await.unwrap().into_inner();
        assert_eq!(first.text.len(), bytes);
        let before = writes.load(Ordering::SeqCst);
        client.answer(ask()).await.unwrap();
        let after = writes.load(Ordering::SeqCst);
        server.abort();
        after - before
    }

    #[tokio::test]
    async fn a_reply_under_a_kibibyte_leaves_with_its_trailers_in_one_write() {
        // Over h2's 256-byte threshold for transports that write vectored; under its 1 KiB one.
        for bytes in [10, 300, 900] {
            assert_eq!(
                writes_for_a_reply_of(bytes).await,
                1,
                "a reply of {bytes} bytes: its headers, data and trailers in one write"
            );
        }
    }
}
