//! Failures of the network between hosts. Each node runs in its own network namespace (a
//! "host") with a private address on a bridge, and a real DNS server (dnsmasq) answers the
//! expert's Service name with its replicas' addresses. A replica's host is then blackholed with
//! nftables (packets dropped, no reset, as when a node dies or a partition cuts it off) while
//! the load generator, on its own host, keeps asking.
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
        let root = run("id", &["-u"]).is_ok()
            && String::from_utf8(Command::new("id").arg("-u").output().ok()?.stdout)
                .ok()?
                .trim()
                == "0";
        if !missing.is_empty() || !root {
            assert!(
                !required,
                "L2D_REQUIRE_NETNS is set, but missing {missing:?} or not root"
            );
            eprintln!("skipped: needs root, ip, nft and dnsmasq (missing {missing:?})");
            return None;
        }
        let mut hosts = Self {
            prefix: format!("l2d{}", std::process::id()),
            hosts: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
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

    /// Drops every packet to and from `host`: no reset, no answer.
    fn blackhole(&self, host: &str) {
        let rules = "table inet l2dblackhole {\n\
                     chain input { type filter hook input priority 0; policy drop; }\n\
                     chain output { type filter hook output priority 0; policy drop; }\n}\n";
        let path = self.dir.path().join("blackhole.nft");
        std::fs::write(&path, rules).unwrap();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(host),
                "nft",
                "-f",
                path.to_str().unwrap(),
            ],
        )
        .unwrap();
    }

    fn heal(&self, host: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(host),
                "nft",
                "delete",
                "table",
                "inet",
                "l2dblackhole",
            ],
        )
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

#[test]
fn a_blackholed_replica_is_ejected_without_losing_a_query_and_returns_when_the_partition_heals() {
    let Some(mut hosts) = Hosts::new(&["scheduler", "e1", "e2", "client"]) else {
        return;
    };
    hosts.serve_dns("l2d-expert-strong", &["e1", "e2"]);
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
    for host in ["e1", "e2"] {
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
    }
    wait_for(&hosts, "e1.log", "expert serving");
    wait_for(&hosts, "e2.log", "expert serving");
    // A try timeout of 1 s and health checks every second: a silent replica costs one slow
    // try per query in flight, then is ejected.
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
    wait_for(&hosts, "scheduler.log", "scheduler serving");
    let router = format!("{}:50051", hosts.address("scheduler"));
    let data = fixture("mini-squad.json");
    let report = hosts.dir.path().join("load.json");
    let load_args = [
        "load",
        "--router",
        &router,
        "--data",
        data.to_str().unwrap(),
        "--duration",
        "12s",
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
    // Under load: cut e1 off, then let it back.
    std::thread::sleep(Duration::from_secs(3));
    hosts.blackhole("e1");
    let cut = Instant::now();
    wait_for(&hosts, "scheduler.log", "replica ejected");
    let ejected_after = cut.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    hosts.heal("e1");
    let load = hosts.children.len() - 1;
    let status = hosts.children[load].wait().unwrap();
    assert!(status.success(), "{}", hosts.log("load.log"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // Every query answered: none failed, none lost past its deadline.
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["count"], report["status_codes"]["OK"], "{report}");
    assert!(report["count"].as_u64().unwrap() > 100, "{report}");
    eprintln!(
        "RELIABILITY | replica host blackholed (nftables drop) 3 s mid-load, then healed | {} | {} | 0 | 0 | p99 {} ms, ejected {:.1} s after the cut",
        report["count"],
        report["status_codes"]["OK"],
        report["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN) / 1e3,
        ejected_after.as_secs_f64()
    );
    // Healed, it comes back into service: a health check passes and it is ready again.
    let e1 = format!("{}:50061", hosts.address("e1"));
    let start = Instant::now();
    loop {
        let table = pool_status(&hosts, "client", &router);
        let row = table
            .lines()
            .find(|l| l.contains(&e1))
            .unwrap_or_default()
            .to_owned();
        if row.contains(" ready ") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "e1 never came back:\n{table}\n{}",
            hosts.log("scheduler.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
