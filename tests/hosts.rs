//! Failures of the network between hosts, and the Kubernetes manifests run as processes. Each
//! node runs in its own network namespace (a "host") with a private address on a bridge, and a
//! real DNS server (dnsmasq) answers Service names with their pods' addresses. The drills
//! blackhole a replica's host with nftables (packets dropped, no reset, as when a node dies or a
//! partition cuts it off), move a replica in DNS and stop the DNS server, while the load
//! generator, on its own host, keeps asking. The manifests test runs every pod of the rendered
//! prod overlay as its container would run: args, env, mounted files, read-only root, user.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `dnsmasq`; skipped without them unless
//! `L2D_REQUIRE_NETNS=1` (which `.ci/run` sets). Every namespace is the test's own, made and
//! deleted by it (also when it fails); no packet goes to any other address.

mod common;

use common::fixture;
use common::process::L2D;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The subnet of the test's bridge (inside its own namespaces only).
const SUBNET: &str = "10.77.0";

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Hosts on one bridge, a DNS server among them, and the processes they run.
struct Hosts {
    prefix: String,
    hosts: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Hosts {
    /// `dns` first (address .2), then `names` (.3, .4, ...). `None` when this machine cannot.
    fn new(names: &[&str]) -> Option<Self> {
        let required = std::env::var("L2D_REQUIRE_NETNS").is_ok_and(|v| v == "1");
        let missing: Vec<&str> = ["ip", "nft", "dnsmasq"]
            .into_iter()
            .filter(|tool| {
                !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                    .iter()
                    .any(|dir| std::path::Path::new(dir).join(tool).exists())
            })
            .collect();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
        if !missing.is_empty() || !root {
            assert!(
                !required,
                "L2D_REQUIRE_NETNS is set, but missing {missing:?} or not root"
            );
            eprintln!("skipped: needs root, ip, nft and dnsmasq (missing {missing:?})");
            return None;
        }
        let mut hosts = Self {
            prefix: {
                // Unique per harness: tests of this file run at once, in one process.
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("l2d{}x{n}", std::process::id())
            },
            hosts: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        // dnsmasq reads its hosts file as nobody.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(hosts.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sw = hosts.ns("sw");
        run("ip", &["netns", "add", &sw]).unwrap();
        hosts.hosts.push("sw".into());
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"]).unwrap();
        run("ip", &["-n", &sw, "link", "set", "br0", "up"]).unwrap();
        for (i, name) in std::iter::once(&"dns").chain(names).enumerate() {
            let ns = hosts.ns(name);
            run("ip", &["netns", "add", &ns]).unwrap();
            hosts.hosts.push((*name).to_owned());
            let port = format!("v{i}");
            run(
                "ip",
                &[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )
            .unwrap();
            run(
                "ip",
                &["-n", &sw, "link", "set", &port, "master", "br0", "up"],
            )
            .unwrap();
            let address = format!("{SUBNET}.{}/24", i + 2);
            run("ip", &["-n", &ns, "addr", "add", &address, "dev", "eth0"]).unwrap();
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]).unwrap();
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]).unwrap();
            // `ip netns exec` mounts this over /etc/resolv.conf: the hosts ask our DNS server.
            let etc = std::path::Path::new("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(etc.join("resolv.conf"), format!("nameserver {SUBNET}.2\n")).unwrap();
        }
        Some(hosts)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The host's address on the bridge.
    fn address(&self, host: &str) -> String {
        let i = self.hosts[1..]
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        format!("{SUBNET}.{}", i + 2)
    }

    /// Runs `program args` on `host`, its output in the test's folder as `log`.
    fn spawn(&mut self, host: &str, program: &str, args: &[&str], log: &str) {
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    /// The DNS server on host `dns`, answering `name` with these hosts' addresses.
    fn serve_dns(&mut self, name: &str, hosts: &[&str]) {
        self.set_dns(name, hosts);
        self.start_dns();
    }

    /// The DNS server on host `dns`, answering each name with its hosts' addresses.
    fn serve_dns_names(&mut self, names: &[(String, Vec<String>)]) {
        self.set_dns_names(names);
        self.start_dns();
    }

    fn start_dns(&mut self) {
        let listen = format!("--listen-address={SUBNET}.2");
        let file = format!("--addn-hosts={}", self.dir.path().join("hosts").display());
        let pid = format!(
            "--pid-file={}",
            self.dir.path().join("dnsmasq.pid").display()
        );
        self.spawn(
            "dns",
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--log-facility=-",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--local-ttl=0",
                &listen,
                &file,
                &pid,
            ],
            "dnsmasq.log",
        );
    }

    fn set_dns(&self, name: &str, hosts: &[&str]) {
        let mut file = std::fs::File::create(self.dir.path().join("hosts")).unwrap();
        for host in hosts {
            writeln!(file, "{} {name}", self.address(host)).unwrap();
        }
    }

    /// Several names at once: each with the hosts it answers.
    fn set_dns_names(&self, names: &[(String, Vec<String>)]) {
        let mut file = std::fs::File::create(self.dir.path().join("hosts")).unwrap();
        for (name, hosts) in names {
            for host in hosts {
                writeln!(file, "{} {name}", self.address(host)).unwrap();
            }
        }
    }

    /// The DNS server's process (the first one spawned).
    fn dns_pid(&self) -> String {
        self.children[0].id().to_string()
    }

    /// Makes the DNS server read its hosts file again.
    fn reload_dns(&self) {
        run("kill", &["-HUP", &self.dns_pid()]).unwrap();
    }

    /// Stops the DNS server: names no longer resolve.
    fn stop_dns(&mut self) {
        let _ = self.children[0].kill();
        let _ = self.children[0].wait();
    }

    /// Runs `program args` on `host` and waits for it.
    fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(host);
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Drops every packet to and from `host`: no reset, no answer.
    fn blackhole(&self, host: &str) {
        let rules = "table inet l2dblackhole {\n\
                     chain input { type filter hook input priority 0; policy drop; }\n\
                     chain output { type filter hook output priority 0; policy drop; }\n}\n";
        let path = self.dir.path().join("blackhole.nft");
        std::fs::write(&path, rules).unwrap();
        self.exec(host, "nft", &["-f", path.to_str().unwrap()])
            .unwrap();
    }

    fn heal(&self, host: &str) {
        self.exec(host, "nft", &["delete", "table", "inet", "l2dblackhole"])
            .unwrap();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in &self.hosts {
            let ns = self.ns(host);
            let _ = run("ip", &["netns", "del", &ns]);
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&ns));
        }
    }
}

/// `l2d pool status` asked from `host`.
fn pool_status(hosts: &Hosts, host: &str, router: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &hosts.ns(host),
            L2D,
            "pool",
            "status",
            "--router",
            router,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `what` in `log` (a hang guard of 20 s, not a timing bound).
fn wait_for(hosts: &Hosts, log: &str, what: &str) {
    let start = Instant::now();
    while !hosts.log(log).contains(what) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {what:?} in {log}:\n{}",
            hosts.log(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pool, the expert's replicas on `replicas` and the scheduler on host `scheduler`, with
/// the expert's name answered by the DNS server. Returns the scheduler's address.
fn start_pool(hosts: &mut Hosts, replicas: &[&str]) -> String {
    hosts.serve_dns("l2d-expert-strong", &replicas[..2.min(replicas.len())]);
    let pool = hosts.dir.path().join("pool.toml");
    std::fs::write(
        &pool,
        format!(
            "[[expert]]\nid = \"strong\"\nbackend = \"replay\"\npredictions = \"{}\"\n\
             data = \"{}\"\ncost = 10\ndns = \"l2d-expert-strong:50061\"\n",
            fixture("strong-predictions.json").display(),
            fixture("mini-squad.json").display()
        ),
    )
    .unwrap();
    let pool = pool.to_str().unwrap().to_owned();
    for host in replicas {
        let args = [
            "expert",
            "--pool",
            &pool,
            "--id",
            "strong",
            "--listen",
            "0.0.0.0:50061",
        ];
        hosts.spawn(host, L2D, &args, &format!("{host}.log"));
        wait_for(hosts, &format!("{host}.log"), "expert serving");
    }
    // Names resolved and health checked every second; an expert call gets at most 1 s, so a
    // silent replica costs one slow try per query in flight, then is ejected.
    let scheduler_args = [
        "scheduler",
        "--listen",
        "0.0.0.0:50051",
        "--pool",
        &pool,
        "--registration",
        "off",
        "--dns-interval",
        "1s",
        "--health-interval",
        "1s",
        "--try-timeout",
        "1s",
    ];
    hosts.spawn("scheduler", L2D, &scheduler_args, "scheduler.log");
    wait_for(hosts, "scheduler.log", "scheduler serving");
    format!("{}:50051", hosts.address("scheduler"))
}

/// Starts `l2d load` on host `client` for `seconds` (4 calls in flight, 3 s deadlines); returns
/// the index of its process and where its JSON report goes.
fn start_load(hosts: &mut Hosts, router: &str, seconds: u32) -> (usize, std::path::PathBuf) {
    let data = fixture("mini-squad.json");
    let report = hosts.dir.path().join("load.json");
    let duration = format!("{seconds}s");
    let load_args = [
        "load",
        "--router",
        router,
        "--data",
        data.to_str().unwrap(),
        "--duration",
        &duration,
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--timeout",
        "3s",
        "--json",
        report.to_str().unwrap(),
    ];
    hosts.spawn("client", L2D, &load_args, "load.log");
    (hosts.children.len() - 1, report)
}

/// Waits for the load to end and returns its report, checking that every query was answered:
/// none failed, none lost past its deadline.
fn finish_load(
    hosts: &mut Hosts,
    (child, report): (usize, std::path::PathBuf),
) -> serde_json::Value {
    let status = hosts.children[child].wait().unwrap();
    assert!(status.success(), "{}", hosts.log("load.log"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["count"], report["status_codes"]["OK"], "{report}");
    assert!(report["count"].as_u64().unwrap() > 100, "{report}");
    report
}

/// Polls `l2d pool status` from the client's host until `done` holds (hang guard: 30 s).
fn wait_for_pool(hosts: &Hosts, router: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let table = pool_status(hosts, "client", router);
        if done(&table) {
            return table;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gave up waiting for {what}:\n{table}\n{}",
            hosts.log("scheduler.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_blackholed_replica_is_ejected_without_losing_a_query_and_returns_when_the_partition_heals() {
    let Some(mut hosts) = Hosts::new(&["scheduler", "e1", "e2", "client"]) else {
        return;
    };
    let router = start_pool(&mut hosts, &["e1", "e2"]);
    let load = start_load(&mut hosts, &router, 12);
    // Under load: cut e1 off, then let it back.
    std::thread::sleep(Duration::from_secs(3));
    hosts.blackhole("e1");
    let cut = Instant::now();
    wait_for(&hosts, "scheduler.log", "replica ejected");
    let ejected_after = cut.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    hosts.heal("e1");
    let report = finish_load(&mut hosts, load);
    eprintln!(
        "RELIABILITY | replica host blackholed (nftables drop) 3 s mid-load, then healed | {} | {} | 0 | 0 | p99 {} ms, ejected {:.1} s after the cut",
        report["count"],
        report["status_codes"]["OK"],
        report["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN) / 1e3,
        ejected_after.as_secs_f64()
    );
    // Healed, it comes back into service: a health check passes and it is ready again.
    let e1 = format!("{}:50061", hosts.address("e1"));
    wait_for_pool(&hosts, &router, "e1 ready again", |table| {
        table
            .lines()
            .any(|l| l.contains(&e1) && l.contains(" ready "))
    });
}

#[test]
fn a_replica_moved_in_dns_is_followed_and_a_dead_dns_server_keeps_the_last_answer() {
    let Some(mut hosts) = Hosts::new(&["scheduler", "e1", "e2", "e3", "client"]) else {
        return;
    };
    // DNS answers e1 and e2; e3 runs, unnamed.
    let router = start_pool(&mut hosts, &["e1", "e2", "e3"]);
    let (e1, e3) = (
        format!("{}:50061", hosts.address("e1")),
        format!("{}:50061", hosts.address("e3")),
    );
    let load = start_load(&mut hosts, &router, 12);
    std::thread::sleep(Duration::from_secs(2));
    // The replica moves: the name now answers e2 and e3.
    hosts.set_dns("l2d-expert-strong", &["e2", "e3"]);
    hosts.reload_dns();
    let moved = Instant::now();
    let table = wait_for_pool(&hosts, &router, "e3 in and e1 out", |table| {
        table.contains(&e3) && !table.contains(&e1)
    });
    let followed_after = moved.elapsed();
    // The DNS server dies: the last answer stands, both replicas stay.
    std::thread::sleep(Duration::from_secs(2));
    hosts.stop_dns();
    std::thread::sleep(Duration::from_secs(3));
    let after = pool_status(&hosts, "client", &router);
    let report = finish_load(&mut hosts, load);
    let rows = |t: &str| t.lines().filter(|l| l.starts_with("strong")).count();
    assert_eq!(rows(&after), 2, "{after}");
    assert!(
        after.contains(&e3) && !after.contains(&e1),
        "{after}\n{table}"
    );
    // The new replica took traffic (its ANSWERED column is not 0).
    let e3_row = after.lines().find(|l| l.contains(&e3)).unwrap();
    let answered: u64 = e3_row.split_whitespace().nth(9).unwrap().parse().unwrap();
    assert!(answered > 0, "{after}");
    eprintln!(
        "RELIABILITY | replica moved in DNS, then the DNS server stopped, mid-load | {} | {} | 0 | 0 | p99 {} ms, followed {:.1} s after the change",
        report["count"],
        report["status_codes"]["OK"],
        report["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN) / 1e3,
        followed_after.as_secs_f64()
    );
}

// ---- The Kubernetes manifests as processes -------------------------------------------------

/// The prod overlay, rendered (`None` without kubectl, unless it is required).
fn render_prod() -> Option<Vec<serde_yaml_ng::Value>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/overlays/prod");
    let out = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("L2D_REQUIRE_KUBECTL").is_err(),
                "kubectl is required: {e}"
            );
            eprintln!("skipped: no kubectl ({e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect(),
    )
}

fn text(v: &serde_yaml_ng::Value) -> String {
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

/// One pod to run: where, as whom, what, with which files.
struct Pod {
    host: String,
    service: String,
    template: serde_yaml_ng::Value,
}

/// A CA, the scheduler's certificate for its Service names, and the pool token: the Secrets the
/// prod overlay expects (docs/deploy.md#secrets-of-the-prod-overlay).
fn secrets() -> std::collections::HashMap<String, Vec<(String, Vec<u8>)>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "l2d drill CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![
        "l2d-scheduler".to_owned(),
        "l2d-scheduler.l2d.svc".to_owned(),
    ])
    .unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "l2d-scheduler");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let mut out = std::collections::HashMap::new();
    out.insert(
        "l2d-scheduler-tls".to_owned(),
        vec![
            ("tls.crt".to_owned(), cert.pem().into_bytes()),
            ("tls.key".to_owned(), key.serialize_pem().into_bytes()),
            ("ca.crt".to_owned(), ca_cert.pem().into_bytes()),
        ],
    );
    out.insert(
        "l2d-pool-token".to_owned(),
        vec![("token".to_owned(), b"drill-token-0123456789abcdef".to_vec())],
    );
    out
}

/// Writes the files of `template`'s volumes under `stage`, returns the shell lines that put them
/// where the container mounts them (inside the pod's own mount namespace), read-only.
fn stage_volumes(
    template: &serde_yaml_ng::Value,
    objects: &[serde_yaml_ng::Value],
    secrets: &std::collections::HashMap<String, Vec<(String, Vec<u8>)>>,
    stage: &std::path::Path,
) -> Vec<String> {
    let spec = &template["spec"];
    let container = &spec["containers"][0];
    let group = spec["securityContext"]["fsGroup"].as_u64();
    let mut lines = Vec::new();
    let mounts = container["volumeMounts"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    for mount in &mounts {
        let path = text(&mount["mountPath"]);
        assert!(
            path.starts_with("/etc/l2d/"),
            "{path}: the drill mounts volumes under /etc/l2d only"
        );
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let mut files: Vec<(String, Vec<u8>)> =
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let map = objects
                    .iter()
                    .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
                    .unwrap_or_else(|| panic!("no ConfigMap {name}"));
                map["data"]
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (text(k), text(v).into_bytes()))
                    .collect()
            } else {
                let name = text(&volume["secret"]["secretName"]);
                secrets[&name].clone()
            };
        let source = if volume["configMap"].is_mapping() {
            &volume["configMap"]
        } else {
            &volume["secret"]
        };
        if let Some(items) = source["items"].as_sequence() {
            files = items
                .iter()
                .map(|item| {
                    let key = text(&item["key"]);
                    let content = files.iter().find(|(k, _)| *k == key).unwrap().1.clone();
                    (text(&item["path"]), content)
                })
                .collect();
        }
        let dir = stage.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in &files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        let mode = source["defaultMode"].as_u64().unwrap_or(0o644);
        lines.push(format!(
            "mkdir -p {path} && cp -r {}/. {path}/",
            dir.display()
        ));
        lines.push(format!("chmod {mode:o} {path}/*"));
        if let Some(group) = group {
            lines.push(format!("chgrp {group} {path}/*"));
        }
    }
    lines
}

impl Hosts {
    /// Runs a pod's container on `host` as its manifest says: its args and env, its volumes'
    /// files where it mounts them, the image's files (this repository) at /usr/share/l2d, a
    /// read-only root, its user and group.
    fn spawn_pod(
        &mut self,
        pod: &Pod,
        objects: &[serde_yaml_ng::Value],
        secrets: &std::collections::HashMap<String, Vec<(String, Vec<u8>)>>,
        log: &str,
    ) {
        let spec = &pod.template["spec"];
        let container = &spec["containers"][0];
        let stage = self.dir.path().join("pods").join(&pod.host);
        let mut script = vec![
            "set -e".to_owned(),
            "mount -t tmpfs tmpfs /etc/l2d".to_owned(),
        ];
        script.extend(stage_volumes(&pod.template, objects, secrets, &stage));
        script.push("mount -o remount,ro /etc/l2d".to_owned());
        let repo = env!("CARGO_MANIFEST_DIR");
        script.push(format!("mount --bind {repo} /usr/share/l2d"));
        script.push("mount -o remount,bind,ro /usr/share/l2d".to_owned());
        if container["securityContext"]["readOnlyRootFilesystem"] == true {
            script.push("mount -o remount,bind,ro /".to_owned());
        }
        let user = spec["securityContext"]["runAsUser"].as_u64().unwrap_or(0);
        let group = spec["securityContext"]["runAsGroup"]
            .as_u64()
            .unwrap_or(user);
        let mut env = Vec::new();
        for var in container["env"].as_sequence().cloned().unwrap_or_default() {
            let value = if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                pod.host.clone()
            } else {
                text(&var["value"])
            };
            env.push(format!("{}={value}", text(&var["name"])));
        }
        let mut groups = String::new();
        if let Some(fs_group) = spec["securityContext"]["fsGroup"].as_u64() {
            groups = format!("--groups {fs_group}");
        }
        script.push(format!(
            "exec setpriv --reuid {user} --regid {group} {} env -i PATH=/usr/bin:/bin {} \"$@\"",
            if groups.is_empty() {
                "--clear-groups".to_owned()
            } else {
                groups
            },
            env.join(" ")
        ));
        let mut args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.ns(&pod.host),
            "unshare".to_owned(),
            "--mount".to_owned(),
            "--propagation".to_owned(),
            "private".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            script.join("\n"),
            "sh".to_owned(),
            L2D.to_owned(),
        ];
        args.extend(container["args"].as_sequence().unwrap().iter().map(text));
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

/// Creates an empty directory to mount over (inside pods' mount namespaces) if it is missing;
/// removes it again when dropped.
struct MountPoint(Option<std::path::PathBuf>);

impl MountPoint {
    fn new(path: &str) -> Self {
        let path = std::path::PathBuf::from(path);
        if path.exists() {
            return Self(None);
        }
        std::fs::create_dir_all(&path).unwrap();
        Self(Some(path))
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_dir(path);
        }
    }
}

#[test]
fn the_prod_overlay_runs_as_processes_and_its_load_test_answers_every_query() {
    let Some(objects) = render_prod() else {
        return;
    };
    // Every Deployment's pods: its autoscaler's minimum, else its replica count.
    let mut pods = Vec::new();
    for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let name = text(&deployment["metadata"]["name"]);
        let count = objects
            .iter()
            .find(|o| {
                o["kind"] == "HorizontalPodAutoscaler"
                    && o["spec"]["scaleTargetRef"]["name"] == name.as_str()
            })
            .map_or_else(
                || deployment["spec"]["replicas"].as_u64(),
                |h| h["spec"]["minReplicas"].as_u64(),
            )
            .unwrap_or(1);
        for i in 0..count {
            pods.push(Pod {
                host: format!("{name}-{i}"),
                service: name.clone(),
                template: deployment["spec"]["template"].clone(),
            });
        }
    }
    let mut names: Vec<String> = pods.iter().map(|p| p.host.clone()).collect();
    names.push("load".to_owned());
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(mut hosts) = Hosts::new(&names_ref) else {
        return;
    };
    let _mount_points = (
        MountPoint::new("/etc/l2d"),
        MountPoint::new("/usr/share/l2d"),
    );
    // Services as DNS names: each answers its Deployment's pods (the selector is the
    // Deployment's own labels: tests/deploy.rs checks it), short and namespaced.
    let namespace = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .map(|d| text(&d["metadata"]["namespace"]))
        .unwrap();
    let mut dns = Vec::new();
    for service in objects.iter().filter(|o| o["kind"] == "Service") {
        let name = text(&service["metadata"]["name"]);
        let backing: Vec<String> = pods
            .iter()
            .filter(|p| p.service == name)
            .map(|p| p.host.clone())
            .collect();
        assert!(
            !backing.is_empty(),
            "Service {name} has no Deployment of its name"
        );
        dns.push((name.clone(), backing.clone()));
        dns.push((format!("{name}.{namespace}.svc"), backing));
    }
    hosts.serve_dns_names(&dns);
    let secrets = secrets();
    // Experts first, then the scheduler, as a rollout from nothing would bring them up.
    let mut order: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.service != "l2d-scheduler")
        .collect();
    order.extend(pods.iter().filter(|p| p.service == "l2d-scheduler"));
    for pod in &order {
        hosts.spawn_pod(pod, &objects, &secrets, &format!("{}.log", pod.host));
    }
    // The kubelet's probes, as it runs them: startup and readiness on the named health service,
    // liveness on the server, at the container's probe ports.
    for pod in &pods {
        let container = &pod.template["spec"]["containers"][0];
        let address = hosts.address(&pod.host);
        for probe in ["readinessProbe", "livenessProbe"] {
            let grpc = &container[probe]["grpc"];
            let port = grpc["port"].as_u64().unwrap();
            let service = grpc["service"].as_str().unwrap_or("").to_owned();
            let target = format!("{address}:{port}");
            let start = Instant::now();
            loop {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &hosts.ns("load"),
                        L2D,
                        "health",
                        "--address",
                        &target,
                        "--service",
                        &service,
                    ])
                    .output()
                    .unwrap();
                if out.status.success() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{} {probe} on {target} {service:?}: {}{}\n{}",
                    pod.host,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    hosts.log(&format!("{}.log", pod.host))
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    // The load-test Job's command, from its own host: every query answered.
    let job = objects.iter().find(|o| o["kind"] == "Job").unwrap();
    let load = Pod {
        host: "load".to_owned(),
        service: String::new(),
        template: job["spec"]["template"].clone(),
    };
    hosts.spawn_pod(&load, &objects, &secrets, "load.log");
    let child = hosts.children.len() - 1;
    let status = hosts.children[child].wait().unwrap();
    let report = hosts.log("load.log");
    assert!(status.success(), "{report}");
    let codes: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("Status code distribution"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('['))
        .collect();
    assert!(
        codes.len() == 1 && codes[0].contains("[OK]"),
        "the load test failed queries:\n{report}"
    );
    eprintln!(
        "the prod overlay as {} processes; load test: {}",
        pods.len(),
        codes[0].trim()
    );
}
