//! Resource-exhaustion drills against a real `l2d scheduler` process over real connections,
//! each reproducing an attack of the "safe by default" review and checking that the process's
//! memory stays within a stated bound and that a legitimate client is still answered:
//!
//! - one connection opening 200,000 header-only streams (raw HTTP/2 frames, no client library
//!   in between that would respect the server's limits);
//! - 150 request bodies that announce 3.5 MB and never finish (the `h2` client, honouring flow
//!   control), and the same with bodies just under the message limit;
//! - 20,000 registrations with 100 ms leases and distinct expert ids and addresses, scraping
//!   `/metrics` while they churn.
//!
//! Memory is the process's resident set from `/proc/PID/status` (`VmHWM`, the peak). The bounds
//! are generous multiples of what a run measures (RELIABILITY.md, security), far below what the
//! same drills did before the limits (hundreds of MB to GB): a regression that drops a limit
//! fails here.
//!
//! `L2D_COMPARE_BIN=path/to/another/l2d cargo test --release --test exhaustion -- --ignored
//! --nocapture` prints the same figures for another build side by side (how RELIABILITY.md's
//! "before" column was measured).

mod common;

use common::cluster::{pool_entry, questions, scheduler_of, scrape};
use common::process::{L2D, Proc};
use l2d::pb::{self, pool_client::PoolClient};
use l2d::{Ask, RouterClient};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A scheduler process with one in-process expert ("strong"), Router and metrics addresses.
struct Target {
    proc: Proc,
    router: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start(bin: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (proc, router, metrics) =
            scheduler_of(bin, dir.path(), &pool_entry("strong", 0.9, ""), extra);
        Self {
            proc,
            router,
            metrics,
            _dir: dir,
        }
    }

    /// A field of /proc/PID/status, in MiB.
    fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.child.id()))
            .expect("the scheduler is running");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib / 1024.0
    }

    /// An Ask a user would send, on a new connection: answered?
    async fn serves_a_client(&self) -> Result<(), String> {
        let (id, question, context) = questions().into_iter().next().unwrap();
        let connect = RouterClient::connect(&self.router);
        let mut client = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let ask = Ask::new(question, context)
            .id(id)
            .timeout(Duration::from_secs(5));
        match client.ask(ask).await {
            Ok(answer) if answer.expert_id == "strong" => Ok(()),
            Ok(other) => Err(format!("answered by {}", other.expert_id)),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HPACK block of a `Router.Ask` call's headers: static-table indexes and literals without
/// indexing (RFC 7541), no Huffman coding.
fn ask_headers() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    let literal = |block: &mut Vec<u8>, name_index: &[u8], value: &str| {
        block.extend_from_slice(name_index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    literal(&mut block, &[0x04], "/l2d.v1.Router/Ask"); // :path
    literal(&mut block, &[0x01], "l2d"); // :authority
    literal(&mut block, &[0x0f, 0x10], "application/grpc"); // content-type (index 31)
    block.extend_from_slice(&[0x00, 2]);
    block.extend_from_slice(b"te");
    literal(&mut block, &[], "trailers");
    block
}

/// Opens `streams` header-only streams on one connection as fast as the socket takes them,
/// acknowledging the server's settings. Returns (streams sent, resets received, GOAWAY seen).
fn stream_flood(address: &str, streams: u32) -> (u32, u32, bool) {
    let socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let writer = Arc::new(Mutex::new(socket.try_clone().unwrap()));
    {
        let mut w = writer.lock().unwrap();
        w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        w.write_all(&frame(0x4, 0, 0, &[])).unwrap();
    }
    // Reader: drains the socket (so the server is never blocked writing), acknowledges
    // SETTINGS, counts RST_STREAM and GOAWAY.
    let reader = {
        let writer = writer.clone();
        let mut socket = socket;
        std::thread::spawn(move || {
            let (mut resets, mut goaway) = (0u32, false);
            let mut head = [0u8; 9];
            while socket.read_exact(&mut head).is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0; len];
                if socket.read_exact(&mut payload).is_err() {
                    break;
                }
                match (head[3], head[4]) {
                    (0x4, flags) if flags & 0x1 == 0 => {
                        let _ = writer.lock().unwrap().write_all(&frame(0x4, 0x1, 0, &[]));
                    }
                    (0x3, _) => resets += 1,
                    (0x7, _) => goaway = true,
                    _ => {}
                }
            }
            (resets, goaway)
        })
    };
    let block = ask_headers();
    let mut sent = 0;
    'sending: for batch in 0..streams.div_ceil(1000) {
        let mut bytes = Vec::new();
        for i in batch * 1000..((batch + 1) * 1000).min(streams) {
            bytes.extend(frame(0x1, 0x4, 2 * i + 1, &block)); // HEADERS, END_HEADERS
        }
        if writer.lock().unwrap().write_all(&bytes).is_err() {
            break 'sending;
        }
        sent = ((batch + 1) * 1000).min(streams);
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = writer.lock().unwrap().shutdown(std::net::Shutdown::Write);
    let (resets, goaway) = reader.join().unwrap();
    (sent, resets, goaway)
}

/// Opens `streams` Ask calls over `connections` connections, each sending a gRPC length prefix
/// of `announced` bytes and then up to `sent` bytes of body, never finishing; waits until the
/// server has taken what it will (no progress for a second). Returns the bytes the server took.
/// The streams stay open until the returned guard is dropped.
async fn slow_bodies(
    address: &str,
    connections: usize,
    streams: usize,
    announced: u32,
    sent: usize,
) -> (usize, Vec<tokio::task::JoinHandle<()>>) {
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut holders = Vec::new();
    for c in 0..connections {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        holders.push(tokio::spawn(async move {
            let _ = connection.await;
        }));
        for _ in (c..streams).step_by(connections) {
            let client = client.clone();
            let taken = taken.clone();
            holders.push(tokio::spawn(async move {
                let Ok(mut ready) = client.ready().await else {
                    return;
                };
                let request = http::Request::post(format!("http://{}/l2d.v1.Router/Ask", "l2d"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let Ok((_response, mut body)) = ready.send_request(request, false) else {
                    return;
                };
                let mut prefix = vec![0u8];
                prefix.extend_from_slice(&announced.to_be_bytes());
                let mut left = sent;
                let mut chunk = bytes::Bytes::from(prefix);
                loop {
                    body.reserve_capacity(chunk.len());
                    let granted = tokio::time::timeout(
                        Duration::from_secs(1),
                        std::future::poll_fn(|cx| body.poll_capacity(cx)),
                    )
                    .await;
                    let Ok(Some(Ok(n))) = granted else {
                        break; // the server stopped taking data, or refused the call
                    };
                    let part = chunk.split_to(n.min(chunk.len()));
                    let len = part.len();
                    if body.send_data(part, false).is_err() {
                        break;
                    }
                    taken.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                    if chunk.is_empty() {
                        if left == 0 {
                            break;
                        }
                        let next = left.min(16 * 1024);
                        left -= next;
                        chunk = bytes::Bytes::from(vec![0x0a; next]);
                    }
                }
                // Hold the stream open, body unfinished.
                std::future::pending::<()>().await;
            }));
        }
    }
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = taken.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            return (now, holders);
        }
        last = now;
    }
}

/// Registers `total` replicas with 100 ms leases, distinct expert ids and addresses, from 16
/// tasks, in four waves: after each, waits until the leases have lapsed and the pool is back to
/// its one declared expert (a hang guard of 20 s, not a timing bound). Scrapes `/metrics` after
/// every 2,500. Returns (registrations granted, the largest scrape in bytes).
async fn registration_churn(target: &Target, total: usize) -> (usize, usize) {
    let granted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tasks, waves) = (16, 4);
    for wave in 0..waves {
        let span = wave * total / waves..(wave + 1) * total / waves;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let router = target.router.clone();
            let metrics = target.metrics.clone();
            let (granted, largest) = (granted.clone(), largest.clone());
            let span = span.clone();
            handles.push(tokio::spawn(async move {
                let mut pool = PoolClient::connect(format!("http://{router}"))
                    .await
                    .unwrap();
                for i in span.skip(t).step_by(tasks) {
                    let request = pb::RegisterRequest {
                        expert_id: format!("squat-{i}"),
                        address: format!("127.0.0.1:{}", 10_000 + i % 50_000),
                        cost: 0.001,
                        backend: "replay".into(),
                        version: "x".into(),
                        lease_ttl_ms: 100,
                        max_in_flight: 0,
                        capabilities: None,
                    };
                    if pool.register(request).await.is_ok() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if i % 2500 == 0 {
                        let metrics = metrics.clone();
                        let size = tokio::task::spawn_blocking(move || scrape(&metrics).len())
                            .await
                            .unwrap();
                        largest.fetch_max(size, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let router = target.router.clone();
        common::eventually(Duration::from_secs(20), "the leases to lapse", || {
            let router = router.clone();
            async move { common::cluster::list_pool(&router).await.experts.len() <= 1 }
        })
        .await;
    }
    (
        granted.load(std::sync::atomic::Ordering::Relaxed),
        largest.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Lines of a `/metrics` scrape (the body after the HTTP head).
fn metric_lines(scrape: &str) -> usize {
    scrape
        .split_once("\r\n\r\n")
        .map_or(0, |(_, body)| body.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_header_only_streams_is_refused_and_memory_stays_bounded() {
    let target = Target::start(L2D, &[]);
    let before = target.memory_mib("VmRSS");
    let router = target.router.clone();
    let (sent, resets, goaway) =
        tokio::task::spawn_blocking(move || stream_flood(&router, 200_000))
            .await
            .unwrap();
    let peak = target.memory_mib("VmHWM");
    eprintln!(
        "stream flood: {sent} streams sent, {resets} resets, goaway {goaway}; RSS {before:.0} MiB before, peak {peak:.0} MiB"
    );
    // At most 128 streams are accepted; the rest are refused (RST_STREAM) or the connection
    // is closed (GOAWAY).
    assert!(resets > 0 || goaway, "the server took every stream");
    assert!(
        peak < before + 64.0,
        "peak {peak:.0} MiB from {before:.0} MiB"
    );
    target.serves_a_client().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_bodies_are_refused_by_their_length_or_bounded_by_the_stream_limits() {
    let target = Target::start(L2D, &[]);
    let before = target.memory_mib("VmRSS");
    // Announced 3.5 MB: refused from the 5-byte length prefix, nothing buffered.
    let (taken, held) = slow_bodies(&target.router, 2, 150, 3_500_000, 3_500_000).await;
    let peak_large = target.memory_mib("VmHWM");
    eprintln!("3.5 MB bodies: {taken} bytes taken; peak {peak_large:.0} MiB");
    assert!(taken < 150 * 64 * 1024, "{taken} bytes taken");
    target.serves_a_client().await.unwrap();
    drop(held);
    // Just under the limit (256 KiB): buffered, but at most 128 calls per connection, each
    // at most the query-sized message limit.
    let (taken, held) = slow_bodies(&target.router, 2, 150, 250_000, 249_000).await;
    let peak = target.memory_mib("VmHWM");
    eprintln!("250 KB bodies: {taken} bytes taken; RSS {before:.0} MiB before, peak {peak:.0} MiB");
    assert!(
        peak < before + 128.0,
        "peak {peak:.0} MiB from {before:.0} MiB"
    );
    target.serves_a_client().await.unwrap();
    for h in held {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_short_leases_leave_memory_and_metrics_bounded() {
    // Registrations let through as fast as they come, so the caps and departures are what
    // bounds the state (the per-credential rate limit would otherwise refuse most).
    let target = Target::start(L2D, &["--register-rate", "1000000"]);
    let before = target.memory_mib("VmRSS");
    let baseline = metric_lines(&scrape(&target.metrics));
    let (granted, largest) = registration_churn(&target, 20_000).await;
    let after = scrape(&target.metrics);
    let peak = target.memory_mib("VmHWM");
    let listed = common::cluster::list_pool(&target.router).await;
    eprintln!(
        "registrations: {granted} of 20000 granted; /metrics {baseline} lines before, {} after, largest scrape {largest} bytes; RSS {before:.0} MiB before, peak {peak:.0} MiB",
        metric_lines(&after)
    );
    // Each of the 4 waves fills the 63 expert slots the declared expert leaves (of 64 by
    // default) at least once: squatters leave with their lease.
    assert!(
        granted >= 4 * 63,
        "only {granted} registrations went through"
    );
    assert!(
        metric_lines(&after) <= baseline + 20,
        "{} lines after, {baseline} before",
        metric_lines(&after)
    );
    assert!(largest < 1024 * 1024, "a scrape of {largest} bytes");
    assert!(
        !after.contains("squat-"),
        "a departed expert's series stayed"
    );
    assert_eq!(listed.experts.len(), 1, "departed experts stay listed");
    assert!(
        peak < before + 128.0,
        "peak {peak:.0} MiB from {before:.0} MiB"
    );
    target.serves_a_client().await.unwrap();
}

/// The three drills against `L2D_COMPARE_BIN` (another build, e.g. before the limits) and this
/// one, in one run; prints figures, asserts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for RELIABILITY.md: set L2D_COMPARE_BIN"]
async fn figures_against_another_build() {
    let Ok(other) = std::env::var("L2D_COMPARE_BIN") else {
        eprintln!("set L2D_COMPARE_BIN to another l2d binary");
        return;
    };
    for (name, bin, extra) in [
        ("other", other.as_str(), &[][..]),
        ("this", L2D, &["--register-rate", "1000000"][..]),
    ] {
        let target = Target::start(bin, extra);
        let router = target.router.clone();
        let before = target.memory_mib("VmRSS");
        let (sent, resets, goaway) =
            tokio::task::spawn_blocking(move || stream_flood(&router, 200_000))
                .await
                .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "{name}: stream flood: {sent} sent, {resets} resets, goaway {goaway}; RSS {before:.0} -> peak {:.0}, now {:.0} MiB; client served: {:?}",
            target.memory_mib("VmHWM"),
            target.memory_mib("VmRSS"),
            target.serves_a_client().await
        );
        drop(target);
        let target = Target::start(bin, extra);
        let before = target.memory_mib("VmRSS");
        let (taken, held) = slow_bodies(&target.router, 2, 150, 3_500_000, 3_500_000).await;
        eprintln!(
            "{name}: 150 unfinished 3.5 MB bodies: {taken} bytes taken; RSS {before:.0} -> peak {:.0} MiB; client served: {:?}",
            target.memory_mib("VmHWM"),
            target.serves_a_client().await
        );
        for h in held {
            h.abort();
        }
        drop(target);
        let target = Target::start(bin, extra);
        let before = target.memory_mib("VmRSS");
        let baseline = metric_lines(&scrape(&target.metrics));
        let (granted, largest) = registration_churn(&target, 20_000).await;
        let after = metric_lines(&scrape(&target.metrics));
        eprintln!(
            "{name}: 20000 registrations, 100 ms leases: {granted} granted; /metrics {baseline} -> {after} lines, largest scrape {largest} bytes; RSS {before:.0} -> peak {:.0}, now {:.0} MiB",
            target.memory_mib("VmHWM"),
            target.memory_mib("VmRSS"),
        );
    }
}

/// A scheduler in this process with `limits`, its one expert "strong" in-process.
async fn scheduler_with(
    limits: l2d::grpc::server::ServerLimits,
) -> (common::Node, l2d::cluster::LocalExperts, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pool = common::pool_file(dir.path(), &pool_entry("strong", 0.9, ""));
    let config = l2d::scheduler::SchedulerConfig {
        server_limits: limits,
        ..Default::default()
    };
    let (node, _, local) = common::spawn_scheduler(config, Some(&pool), 0.1).await;
    (node, local, dir)
}

/// Opens an Ask call whose body starts and never ends; returns the gRPC status it ends with.
async fn unfinished_call(address: &str) -> (h2::SendStream<bytes::Bytes>, Option<String>) {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut ready = client.ready().await.unwrap();
    let request = http::Request::post("http://l2d/l2d.v1.Router/Ask")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = ready.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 3, 232, 0x0a]), false)
        .unwrap();
    // A hang guard, not a timing bound: the body deadline under test is a fraction of it.
    let response = tokio::time::timeout(Duration::from_secs(20), response).await;
    let status = match response {
        Ok(Ok(response)) => {
            let in_headers = response.headers().get("grpc-status").cloned();
            let mut recv = response.into_body();
            while let Some(Ok(_)) = recv.data().await {}
            let trailers = recv.trailers().await.ok().flatten();
            in_headers
                .or_else(|| trailers.and_then(|t| t.get("grpc-status").cloned()))
                .map(|v| v.to_str().unwrap().to_owned())
        }
        _ => None,
    };
    (body, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_is_cut_off_at_the_body_deadline() {
    let limits = l2d::grpc::server::ServerLimits {
        body_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (node, local, _dir) = scheduler_with(limits).await;
    let (_held, status) = unfinished_call(&node.addr.to_string()).await;
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED expected");
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_in_service_limit_are_refused_before_their_body() {
    let limits = l2d::grpc::server::ServerLimits {
        max_calls_in_service: 2,
        body_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let (node, local, _dir) = scheduler_with(limits).await;
    let address = node.addr.to_string();
    // Two calls hold the two slots with bodies that never end, so a third is refused at once.
    // (A holder that raced an Ask for a slot was refused itself: it is opened again.)
    let (id, question, context) = questions().into_iter().next().unwrap();
    let mut client = RouterClient::from_channel(node.channel().await);
    let ask = || Ask::new(question.clone(), context.clone()).id(id.clone());
    let hold = || {
        let address = address.clone();
        tokio::spawn(async move { unfinished_call(&address).await })
    };
    let mut holders = vec![hold(), hold()];
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the slots never filled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        for h in holders.iter_mut().filter(|h| h.is_finished()) {
            *h = hold();
        }
        match client.ask(ask()).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
            _ => {}
        }
    };
    assert!(
        l2d::grpc::status::retry_after(&refused).is_some(),
        "{refused:?}"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    // When their bodies time out, the slots are free again.
    for h in holders {
        let (_, status) = h.await.unwrap();
        assert_eq!(status.as_deref(), Some("4"));
    }
    assert_eq!(client.ask(ask()).await.unwrap().expert_id, "strong");
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_and_pool_listeners_share_one_budget_of_calls_in_service() {
    use std::sync::Arc;
    let limits = l2d::grpc::server::ServerLimits {
        max_calls_in_service: 1,
        body_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let config = l2d::scheduler::SchedulerConfig {
        server_limits: limits,
        ..Default::default()
    };
    let scheduler = Arc::new(l2d::scheduler::Scheduler::new(
        config,
        Box::new(l2d::core::policy::PriorPolicy::new(0.1, []).unwrap()),
    ));
    let router = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pool = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (router_address, pool_address) = (router.local_addr().unwrap(), pool.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = l2d::scheduler::Listeners {
        router,
        pool: Some(pool),
        health: None,
    };
    let served = tokio::spawn(l2d::scheduler::serve_on(listeners, scheduler, async {
        let _ = stopped.await;
    }));
    // One unfinished call on the Router's port takes the only slot; a Pool call on the other
    // port is refused until its body deadline frees it.
    let holder = {
        let address = router_address.to_string();
        tokio::spawn(async move { unfinished_call(&address).await })
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut client = PoolClient::connect(format!("http://{pool_address}"))
        .await
        .unwrap();
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the slot was never taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        match client.list_pool(pb::ListPoolRequest {}).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break,
            _ => assert!(!holder.is_finished(), "the holder was refused"),
        }
    }
    let (_, status) = holder.await.unwrap();
    assert_eq!(status.as_deref(), Some("4"));
    client.list_pool(pb::ListPoolRequest {}).await.unwrap();
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
