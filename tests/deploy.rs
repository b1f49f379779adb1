//! The Kubernetes manifests against the binary they run: every overlay of `deploy/k8s` is
//! rendered with `kubectl kustomize`, and the ports, gRPC health service names, configuration
//! paths and files in it must match what `l2d` serves and reads. One source of truth: a port or
//! path changed on one side only fails here.
//!
//! Needs `kubectl` (kustomize is built in); skipped without it unless `L2D_REQUIRE_KUBECTL=1`
//! (`.ci/run` sets it). Schema validation is `deploy/k8s/validate.sh` (kubernetes-validate).

use l2d::core::learned::PolicyFile;
use l2d::pool_file::{BackendSpec, Placement, PoolFile};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rendered objects of an overlay, or `None` when kubectl is missing (and allowed to be).
fn render(overlay: &str) -> Option<Vec<Value>> {
    let dir = repo().join("deploy/k8s/overlays").join(overlay);
    let out = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(out) => out,
        Err(e) if std::env::var("L2D_REQUIRE_KUBECTL").is_ok_and(|v| v == "1") => {
            panic!("kubectl is required (L2D_REQUIRE_KUBECTL=1): {e}")
        }
        Err(e) => {
            eprintln!("skipping: no kubectl ({e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect(),
    )
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// The value following `flag` in a container's args.
fn arg<'a>(container: &'a Value, flag: &str) -> &'a str {
    args_has(container, flag).unwrap_or_else(|| panic!("no {flag} in {:?}", container["args"]))
}

fn port_of(address: &str) -> u64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// The volume mounted (whole, not `subPath`: edits and rotations reach the file) at the folder
/// where `path` is read.
fn mounted_volume<'a>(pod: &'a Value, container: &Value, path: &Path) -> &'a Value {
    let dir = path.parent().unwrap();
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(str_of(&m["mountPath"])) == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
    assert!(
        mount["subPath"].is_null(),
        "subPath mounts never see ConfigMap edits or Secret rotations"
    );
    pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap()
}

/// The content of the ConfigMap file mounted where `path` is read, checking the mount.
fn mounted_file<'a>(objects: &'a [Value], pod: &Value, container: &Value, path: &str) -> &'a str {
    let path = Path::new(path);
    let volume = mounted_volume(pod, container, path);
    let config_map = find(objects, "ConfigMap", str_of(&volume["configMap"]["name"]));
    str_of(&config_map["data"][path.file_name().unwrap().to_str().unwrap()])
}

/// The Secret mounted where `path` is read.
fn mounted_secret<'a>(pod: &'a Value, container: &Value, path: &str) -> &'a str {
    str_of(&mounted_volume(pod, container, Path::new(path))["secret"]["secretName"])
}

/// Checks one container's gRPC port, probes (on `probe_port`) and health service names.
fn check_grpc(container: &Value, listen_port: u64, probe_port: u64, services: &[&str]) {
    assert_eq!(container_port(container, "grpc"), listen_port);
    let ready = &container["readinessProbe"]["grpc"];
    assert_eq!(ready["port"].as_u64(), Some(probe_port));
    assert!(
        services.contains(&str_of(&ready["service"])),
        "readiness asks for {:?}, the binary serves {services:?}",
        ready["service"]
    );
    let live = &container["livenessProbe"]["grpc"];
    assert_eq!(live["port"].as_u64(), Some(probe_port));
    // No service name: the server as a whole, which every l2d node reports.
    assert!(live["service"].is_null());
}

fn check_pod_security(name: &str, pod: &Value) {
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
    for c in pod["containers"].as_sequence().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
        assert!(c["resources"]["requests"].is_mapping(), "{name}");
        assert!(c["resources"]["limits"].is_mapping(), "{name}");
    }
}

/// The value following `flag` in a container's args, if the flag is there.
fn args_has<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = container["args"].as_sequence().unwrap();
    let at = args.iter().position(|a| a == flag)?;
    Some(str_of(&args[at + 1]))
}

/// The families an expert worker's `/metrics` has.
fn worker_metric_families() -> Vec<String> {
    let node = l2d::expert::ExpertNode::new(
        "typed",
        1.0,
        std::sync::Arc::new(l2d::expert::typed::TypedReader::default()),
    );
    node.publish_metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A production expert keeps a replica through a node drain, and can be drained: its budget
/// requires at least one pod but fewer than it always has.
fn check_disruption_budget(objects: &[Value], name: &str, deployment: &Value) {
    let budget = find(objects, "PodDisruptionBudget", name);
    assert!(budget["spec"]["maxUnavailable"].is_null(), "{name}");
    let min_available = budget["spec"]["minAvailable"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}: no minAvailable"));
    let fewest = objects
        .iter()
        .find(|o| {
            o["kind"] == "HorizontalPodAutoscaler" && o["spec"]["scaleTargetRef"]["name"] == name
        })
        .map_or_else(
            || deployment["spec"]["replicas"].as_u64(),
            |hpa| hpa["spec"]["minReplicas"].as_u64(),
        )
        .unwrap_or(1);
    assert!(
        (1..fewest).contains(&min_available),
        "{name}: minAvailable {min_available} with at least {fewest} replicas"
    );
    // The budget covers exactly this expert's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in budget["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&labels[k.as_str().unwrap()], v, "{name}");
    }
}

fn seconds(duration: &str) -> u64 {
    humantime::parse_duration(duration).unwrap().as_secs()
}

/// Checks an overlay against the binary; `unscored` are the pool's experts after the policy's
/// (the live reader, and any the overlay adds), which the shipped policy was not trained on.
fn check_overlay(overlay: &str, unscored: &[&str]) {
    let Some(objects) = render(overlay) else {
        return;
    };
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY data /usr/share/l2d/data"));

    // The scheduler: ports, probes, metrics, configuration.
    let deployment = find(&objects, "Deployment", "l2d-scheduler");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "scheduler");
    let grpc_port = port_of(arg(c, "--listen"));
    // Probes go to the plain health-only listener (kubelet gRPC probes cannot speak TLS).
    let health_port = port_of(arg(c, "--health-listen"));
    assert_eq!(container_port(c, "health"), health_port);
    check_grpc(c, grpc_port, health_port, l2d::scheduler::SERVICES);
    let pool_port = port_of(arg(c, "--pool-listen"));
    assert_eq!(container_port(c, "pool"), pool_port);
    // No open control plane: experts are placed by DNS, registration is off.
    assert_eq!(arg(c, "--registration"), "off");
    let args = c["args"].as_sequence().unwrap();
    assert!(!args.iter().any(|a| a == "--insecure-pool"));
    let metrics_port = port_of(arg(c, "--metrics-listen"));
    assert_eq!(container_port(c, "metrics"), metrics_port);
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let service = find(&objects, "Service", "l2d-scheduler");
    for (name, port) in [
        ("grpc", grpc_port),
        ("pool", pool_port),
        ("metrics", metrics_port),
    ] {
        let p = service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        assert_eq!(p["port"].as_u64(), Some(port));
        assert_eq!(p["targetPort"], name);
        assert!(p["appProtocol"].is_string());
    }
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > seconds(arg(c, "--drain-delay"))
    );
    check_pod_security("scheduler", pod);
    if overlay == "prod" {
        // Production serves TLS and guards the Pool with a token, both from Secrets.
        for flag in ["--tls-cert", "--tls-key", "--pool-token-file"] {
            let secret = mounted_secret(pod, c, arg(c, flag));
            assert!(secret.starts_with("l2d-"), "{flag}: {secret}");
        }
    }
    let pool_text = mounted_file(&objects, pod, c, arg(c, "--pool"));
    let policy_text = mounted_file(&objects, pod, c, arg(c, "--policy"));
    // Content-hashed ConfigMaps: a changed file is a new name, so a rollout (and its undo).
    for (flag, base) in [("--pool", "l2d-pool-"), ("--policy", "l2d-policy-")] {
        let volume = mounted_volume(pod, c, Path::new(arg(c, flag)));
        let name = str_of(&volume["configMap"]["name"]);
        assert!(
            name.strip_prefix(base).is_some_and(|hash| hash.len() >= 8),
            "{flag} is mounted from {name}, not a content-hashed ConfigMap"
        );
    }
    // How long a draining expert may keep getting calls: until the scheduler's next health
    // check sees NOT_SERVING, or its next DNS resolution drops the pod.
    let discovery = seconds(arg(c, "--health-interval")) + seconds(arg(c, "--dns-interval"));
    let try_timeout = args_has(c, "--try-timeout").map_or(10, seconds);

    // The policy in the ConfigMap is the shipped cascade, byte for byte, and loads. It must fit
    // in a ConfigMap (1 MiB in all); the recommended defer policy, with its hashed question
    // n-gram weights, does not.
    let shipped = std::fs::read_to_string(repo().join("policies/squad-v1.1-cascade.json")).unwrap();
    assert!(
        policy_text == shipped,
        "deploy/k8s/base/config/policy.json differs from policies/squad-v1.1-cascade.json: copy it again"
    );
    // What is left of the 1 MiB for the ConfigMap's own fields is ample.
    assert!(
        policy_text.len() < 1_000_000,
        "the policy ConfigMap's file ({} bytes) would not fit in a ConfigMap's 1 MiB",
        policy_text.len()
    );
    let policy = PolicyFile::parse(policy_text).unwrap();

    // The pool file: every expert behind a headless Service and a Deployment serving its entry.
    let pool = PoolFile::parse(pool_text, Path::new("/etc/l2d/pool/pool.toml")).unwrap();
    let ids: Vec<&str> = pool.experts.iter().map(|e| e.id.as_str()).collect();
    let policy_ids: Vec<&str> = policy.experts.iter().map(|a| a.id.as_str()).collect();
    // The policy's experts are the pool's, in its order; the pool adds the live reader (and
    // what the overlay adds) the policy was not trained on.
    assert_eq!(
        ids[..policy_ids.len()],
        policy_ids,
        "the policy's experts are the pool's"
    );
    assert_eq!(ids[policy_ids.len()..], *unscored);
    for spec in &pool.experts {
        let Placement::Dns { name } = &spec.placement else {
            panic!("expert {} is not placed by DNS", spec.id)
        };
        let (host, port) = name.rsplit_once(':').unwrap();
        let port: u64 = port.parse().unwrap();
        let service = find(&objects, "Service", host);
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{host} is not headless"
        );
        let service_port = &service["spec"]["ports"][0];
        assert_eq!(service_port["port"].as_u64(), Some(port));
        let deployment = find(&objects, "Deployment", host);
        let pod = &deployment["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["args"][0], "expert");
        assert_eq!(arg(c, "--id"), spec.id);
        let listen = port_of(arg(c, "--listen"));
        assert_eq!(listen, port);
        check_grpc(c, listen, listen, l2d::expert::SERVICES);
        assert_eq!(service_port["targetPort"], "grpc");
        // Its metrics are where the scrape annotations say.
        let metrics_port = port_of(arg(c, "--metrics-listen"));
        assert_eq!(container_port(c, "metrics"), metrics_port);
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
        // The Service selects exactly this expert's pods.
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(&labels[k.as_str().unwrap()], v);
        }
        assert_eq!(labels["l2d.dev/expert"], spec.id.as_str());
        assert_eq!(mounted_file(&objects, pod, c, arg(c, "--pool")), pool_text);
        // It answers until the scheduler has stopped sending, then finishes the calls it has.
        let drain = seconds(arg(c, "--drain-delay"));
        assert!(
            drain > discovery,
            "{}: a drain of {drain} s ends before the scheduler notices ({discovery} s)",
            spec.id
        );
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= drain + try_timeout,
            "{}",
            spec.id
        );
        if overlay == "prod" {
            check_disruption_budget(&objects, host, deployment);
        }
        check_pod_security(&spec.id, pod);
        // The files it serves are in the image: /usr/share/l2d/ is the repository's root.
        let BackendSpec::Replay { predictions, data } = &spec.backend else {
            continue;
        };
        for path in std::iter::once(predictions).chain(data) {
            let inside = path.strip_prefix("/usr/share/l2d").unwrap();
            assert!(
                repo().join(inside).exists(),
                "{} is not in the image",
                path.display()
            );
        }
    }

    // The experts most queries ask first (a defer policy's probes, the cheap experts a cascade's
    // first stage asks) scale with that traffic in production, read from a metric the workers
    // export: every expert autoscaler that reads a Pods metric reads one that exists, and the
    // experts a defer policy would probe have one.
    if overlay == "prod" {
        let exported = worker_metric_families();
        let on_traffic: Vec<(&str, &str)> = objects
            .iter()
            .filter(|o| o["kind"] == "HorizontalPodAutoscaler")
            .filter_map(|hpa| {
                let traffic = hpa["spec"]["metrics"]
                    .as_sequence()?
                    .iter()
                    .find(|m| m["type"] == "Pods")?;
                Some((
                    str_of(&hpa["spec"]["scaleTargetRef"]["name"]),
                    str_of(&traffic["pods"]["metric"]["name"]),
                ))
            })
            .collect();
        for (target, metric) in &on_traffic {
            assert!(
                exported.iter().any(|e| e == metric),
                "{target} scales on {metric}, which a worker does not export ({exported:?})"
            );
        }
        let defer = PolicyFile::parse(
            &std::fs::read_to_string(repo().join("policies/squad-v1.1-defer.json")).unwrap(),
        )
        .unwrap();
        assert!(!defer.probes.is_empty());
        for probe in policy.probes.iter().chain(&defer.probes) {
            let name = format!("l2d-expert-{probe}");
            assert!(
                on_traffic.iter().any(|(target, _)| *target == name),
                "the probe {probe} does not scale with traffic: {on_traffic:?}"
            );
        }
    }

    // Only the scheduler reaches the experts.
    let policy = find(&objects, "NetworkPolicy", "l2d-experts");
    let scheduler_labels =
        &find(&objects, "Deployment", "l2d-scheduler")["spec"]["template"]["metadata"]["labels"];
    let from = &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
    for (k, v) in from.as_mapping().unwrap() {
        assert_eq!(&scheduler_labels[k.as_str().unwrap()], v);
    }

    // The load test aims at the scheduler's Service and gRPC port.
    let job = find(&objects, "Job", "l2d-load");
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "load");
    assert_eq!(arg(c, "--router"), format!("l2d-scheduler:{grpc_port}"));
    assert!(
        repo()
            .join(arg(c, "--data").strip_prefix("/usr/share/l2d/").unwrap())
            .exists()
    );
    check_pod_security("load", pod);
    if overlay == "prod" {
        mounted_secret(pod, c, arg(c, "--tls-ca"));
    }
}

#[test]
fn the_dev_overlay_matches_the_binary() {
    check_overlay("dev", &["typed"]);
}

#[test]
fn the_prod_overlay_matches_the_binary() {
    check_overlay("prod", &["typed"]);
}

/// The example overlay with vLLM: the `llm` expert's pool entry names vLLM's Service, port,
/// served model name and key variable, within what vLLM batches, and only that expert may
/// call it.
#[test]
fn the_llm_example_overlay_wires_an_openai_expert_to_vllm() {
    check_overlay("llm-example", &["typed", "llm"]);
    let Some(objects) = render("llm-example") else {
        return;
    };
    // Everything it adds lands in the overlay's namespace, beside the scheduler.
    let namespace = &find(&objects, "Deployment", "l2d-scheduler")["metadata"]["namespace"];
    for o in objects.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(
            &o["metadata"]["namespace"], namespace,
            "{:?}",
            o["metadata"]
        );
    }
    let pool_map = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap" && str_of(&o["metadata"]["name"]).starts_with("l2d-pool-")
        })
        .unwrap();
    let pool = PoolFile::parse(
        str_of(&pool_map["data"]["pool.toml"]),
        Path::new("/etc/l2d/pool/pool.toml"),
    )
    .unwrap();
    let llm = pool.experts.iter().find(|e| e.id == "llm").unwrap();
    let BackendSpec::OpenAi(config) = &llm.backend else {
        panic!("llm is not an openai expert: {:?}", llm.backend)
    };
    let vllm = find(&objects, "Deployment", "vllm");
    check_pod_security("vllm", &vllm["spec"]["template"]["spec"]);
    let server = &vllm["spec"]["template"]["spec"]["containers"][0];
    // The URL is the Service's name and port, and the port reaches vLLM's.
    let service = find(&objects, "Service", config.url.host_str().unwrap());
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"].as_u64(), config.url.port().map(u64::from));
    assert_eq!(
        container_port(server, str_of(&port["targetPort"])),
        arg(server, "--port").parse::<u64>().unwrap()
    );
    assert_eq!(config.url.path(), "/v1");
    assert_eq!(config.model, arg(server, "--served-model-name"));
    // No more calls at once than vLLM batches.
    let batch: u32 = arg(server, "--max-num-seqs").parse().unwrap();
    assert!(llm.max_in_flight.unwrap() <= batch);
    // The key variable the entry names comes from the Secret vLLM takes its key from.
    let secret_of = |container: &Value, variable: &str| {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("no {variable} in {:?}", container["name"]))["valueFrom"]
            ["secretKeyRef"]
            .clone()
    };
    let expert = find(&objects, "Deployment", "l2d-expert-llm");
    let worker = &expert["spec"]["template"]["spec"]["containers"][0];
    let key_variable = config.api_key_env.as_deref().unwrap();
    assert_eq!(
        secret_of(worker, key_variable),
        secret_of(server, "VLLM_API_KEY")
    );
    // Only the llm expert's pods may call vLLM, and they may.
    let labels = &expert["spec"]["template"]["metadata"]["labels"];
    let ingress = &find(&objects, "NetworkPolicy", "vllm")["spec"]["ingress"][0];
    for (k, v) in ingress["from"][0]["podSelector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&labels[k.as_str().unwrap()], v);
    }
    let egress = &find(&objects, "NetworkPolicy", "l2d-expert-llm-to-vllm")["spec"];
    for (k, v) in egress["podSelector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v);
    }
    let vllm_labels = &vllm["spec"]["template"]["metadata"]["labels"];
    for (k, v) in egress["egress"][0]["to"][0]["podSelector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&vllm_labels[k.as_str().unwrap()], v);
    }
}
