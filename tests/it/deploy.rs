//! Checks `deploy/` against the server it deploys: every manifest parses, probes and ports
//! match the routes and flags the binary really has, and every metric that an alert, the
//! autoscaler or the dashboard queries is exported by a live server.
use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// Every YAML document in `path`, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path, exts));
        } else if exts
            .iter()
            .any(|e| path.extension().is_some_and(|x| x == *e))
        {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The Kubernetes objects of every manifest under `deploy/`, with the file each came from.
fn objects() -> Vec<(PathBuf, Value)> {
    files_under(&deploy(), &["yaml", "yml"])
        .into_iter()
        .flat_map(|path| {
            yaml_docs(&path)
                .into_iter()
                .map(move |doc| (path.clone(), doc))
        })
        .filter(|(_, doc)| doc.get("kind").is_some())
        .collect()
}

fn object(kind: &str, name: &str) -> Value {
    objects()
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_manifest_parses_and_kustomizations_are_complete() {
    let files = files_under(&deploy(), &["yaml", "yml"]);
    assert!(files.len() >= 10, "{files:?}");
    let mut kinds = BTreeSet::new();
    for path in &files {
        let docs = yaml_docs(path);
        assert!(!docs.is_empty(), "{} is empty", path.display());
        for doc in docs {
            let Some(kind) = doc.get("kind").and_then(Value::as_str) else {
                continue; // Helm values and the tenants example are not API objects.
            };
            kinds.insert(kind.to_string());
            assert!(
                doc["apiVersion"].is_string(),
                "{}: {kind} without apiVersion",
                path.display()
            );
            if kind != "Kustomization" {
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "{}: {kind} without metadata.name",
                    path.display()
                );
            }
            if kind == "Kustomization" {
                let resources = doc["resources"].as_array().unwrap();
                for r in resources {
                    let file = path.parent().unwrap().join(r.as_str().unwrap());
                    assert!(
                        file.is_file(),
                        "{} lists missing {}",
                        path.display(),
                        file.display()
                    );
                }
                // Every manifest next to a kustomization is part of it.
                let listed: BTreeSet<_> = resources.iter().map(|r| r.as_str().unwrap()).collect();
                for sibling in files_under(path.parent().unwrap(), &["yaml"]) {
                    let name = sibling.file_name().unwrap().to_str().unwrap();
                    if name != "kustomization.yaml" && sibling.parent() == path.parent() {
                        let is_object = yaml_docs(&sibling).iter().any(|d| d.get("kind").is_some());
                        assert!(
                            !is_object || listed.contains(name),
                            "{} does not list {name}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(kind), "no {kind} under deploy/: {kinds:?}");
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/promptd.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<_> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "panel ids repeat"
    );
}

/// `serve --help`, which names every flag with its `PROMPTD_*` variable.
fn serve_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args(["serve", "--help"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn deployment_matches_the_server() {
    let deployment = object("Deployment", "promptd");
    let config = object("ConfigMap", "promptd-config");
    let service = object("Service", "promptd");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // Every variable in the ConfigMap is a real flag of `promptd serve`.
    let help = serve_help();
    let env = config["data"].as_object().unwrap();
    for key in env.keys() {
        assert!(
            help.contains(&format!("[env: {key}=")),
            "{key} is not a serve flag"
        );
    }
    assert_eq!(container["args"][0], "serve");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "promptd-config"
    );

    // Named ports agree with the addresses the server binds and with the Service.
    let ports: Vec<(String, u64)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let port = |name: &str| ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
    assert_eq!(
        port("http"),
        Some(port_of(env["PROMPTD_ADDR"].as_str().unwrap()))
    );
    assert_eq!(
        port("grpc"),
        Some(port_of(env["PROMPTD_GRPC_ADDR"].as_str().unwrap()))
    );
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(
            port(target).is_some(),
            "Service targets unknown port {target}"
        );
    }
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    // Probes: readiness and startup on /readyz, liveness on /healthz, all on the HTTP port.
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
    }
    let startup = &container["startupProbe"];
    let startup_s =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(
        startup_s >= 20 * 60,
        "startup probe allows only {startup_s} s for an 11B load"
    );

    // Termination outlasts the preStop sleep plus the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let drain: u64 = env["PROMPTD_SHUTDOWN_TIMEOUT_S"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace > pre_stop + drain + 10,
        "grace {grace} s, preStop {pre_stop} s, drain {drain} s"
    );

    // One GPU, non-root, read-only root and model.
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| mounts.iter().find(|m| m["mountPath"] == path);
    let model_dir = env["PROMPTD_MODEL"].as_str().unwrap();
    let model_mount = mounts
        .iter()
        .find(|m| model_dir.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("model folder is mounted");
    assert_eq!(model_mount["readOnly"], true);
    let prompts =
        mount(env["PROMPTD_PROMPTS"].as_str().unwrap()).expect("prompts folder is mounted");
    assert_ne!(prompts["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == prompts["name"])
        .unwrap();
    let claim = object(
        "PersistentVolumeClaim",
        volume["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteMany");

    // The PDB and the HPA select and scale this Deployment.
    let pdb = object("PodDisruptionBudget", "promptd");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let hpa = object("HorizontalPodAutoscaler", "promptd");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "promptd");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
}

#[tokio::test]
async fn kserve_runtime_matches_the_server() {
    let runtime = object("ServingRuntime", "promptd");
    let container = &runtime["spec"]["containers"][0];
    assert_eq!(runtime["spec"]["protocolVersions"][0], "v2");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    let help = serve_help();
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} <")),
            "{flag} is not a serve flag"
        );
    }
    assert!(
        args.contains(&"--model=/mnt/models"),
        "KServe puts the model in /mnt/models"
    );
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(args.contains(&format!("--addr=0.0.0.0:{port}").as_str()));
    let format = &runtime["spec"]["supportedModelFormats"][0]["name"];
    let service = object("InferenceService", "promptd-t5-xxl");
    assert_eq!(
        &service["spec"]["predictor"]["model"]["modelFormat"]["name"],
        format
    );
    assert_eq!(service["spec"]["predictor"]["model"]["runtime"], "promptd");

    // Its probes answer 200 on a ready server.
    let s = common::inproc::setup(common::inproc::defaults, false).await;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"].as_u64(), Some(port), "{probe}");
        let path = get["path"].as_str().unwrap();
        let r = common::inproc::call(&s.state, common::inproc::get(path)).await;
        assert_eq!(r.status, 200, "{probe} {path}");
    }
}

/// Every `promptd_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("promptd_") {
        let start = i + at;
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// PromQL expressions and metric names used by the alerts, the adapter, the HPA and the dashboard.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in files_under(&deploy(), &["yaml", "yml"]) {
        for doc in yaml_docs(&path) {
            collect_strings(&doc, &mut |key, s| {
                if matches!(
                    key,
                    "expr" | "seriesQuery" | "metricsQuery" | "name" | "matches" | "as"
                ) && s.contains("promptd_")
                {
                    out.push((path.display().to_string(), s.to_string()));
                }
            });
        }
    }
    let dashboard = deploy().join("grafana/promptd.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap()).unwrap();
    collect_strings(&value, &mut |key, s| {
        if matches!(key, "expr" | "query" | "definition") {
            out.push((dashboard.display().to_string(), s.to_string()));
        }
    });
    out
}

fn collect_strings(v: &Value, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if let Value::String(s) = v {
                    f(k, s);
                } else {
                    collect_strings(v, f);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, f)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_deploy_uses_is_exported() {
    let prompts = tempfile::tempdir().unwrap();
    common::copy_dir(
        &common::fixtures().join("prompts/tiny-demo"),
        prompts.path(),
    );
    let server = common::inproc::Served::start_in(prompts, |_| {}).await;
    // One request, so the per-task series exist.
    let client = reqwest::Client::new();
    let resp = client
        .post(server.url("/v1/tasks/demo-a/predict"))
        .json(&serde_json::json!({"inputs": "hello", "max_new_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = common::metrics(&client, &server).await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    assert!(text.contains("promptd_ready 1"), "{text}");

    let queries = queries();
    let mut used = BTreeSet::new();
    for (file, query) in &queries {
        for name in metric_names(query) {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which the server does not export:\n{query}"
            );
            used.insert(name);
        }
    }
    // The alerts, the autoscaler and the dashboard do look at the core series.
    for name in [
        "promptd_requests_total",
        "promptd_request_duration_seconds_bucket",
        "promptd_batch_size_sum",
        "promptd_batch_tasks_sum",
        "promptd_queue_depth",
        "promptd_queue_capacity",
        "promptd_prompts_loaded",
        "promptd_prompt_uploads_total",
        "promptd_ready",
    ] {
        assert!(used.contains(name), "nothing in deploy/ uses {name}");
    }
    drop(server);
}

/// The Dockerfile's stages: (name, lines).
fn docker_stages() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // Join continuation lines, drop comments.
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.split(" AS ").nth(1).unwrap_or("").trim().to_string();
            stages.push((name, Vec::new()));
        }
        if let Some((_, lines)) = stages.last_mut() {
            lines.push(line.to_string());
        }
    }
    stages
}

/// Shared libraries `file` needs (readelf's NEEDED entries).
fn needed(file: &Path) -> Vec<String> {
    let out = std::process::Command::new("readelf")
        .args(["-d", file.to_str().unwrap()])
        .output()
        .expect("readelf (binutils) runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect()
}

#[test]
fn dockerfile_builds_like_make_and_runs_as_non_root() {
    let stages = docker_stages();
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.last(),
        Some(&"runtime-cuda"),
        "the GPU image is the default target"
    );
    let stage = |name: &str| &stages.iter().find(|(n, _)| n == name).unwrap().1;
    let has = |name: &str, needle: &str| stage(name).iter().any(|l| l.contains(needle));
    // libtorch is provisioned and the binary built by the Makefile's own targets.
    assert!(has("build-base", "RUN make libtorch"));
    assert!(has("build-cuda", "make build-cuda"));
    assert!(has("build-cpu", "make build"));
    let provision = std::fs::read_to_string(repo().join("scripts/provision-libtorch.sh")).unwrap();
    let torch = provision
        .lines()
        .find_map(|l| l.strip_prefix("TORCH_VERSION=\""))
        .unwrap()
        .trim_end_matches('"');
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("ARG TORCH_VERSION={torch}")));

    let help = serve_help();
    for runtime in ["runtime-cpu", "runtime-cuda"] {
        let user = stage(runtime)
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{runtime} sets no USER"));
        assert!(
            !user.starts_with("0") && !user.starts_with("root"),
            "{runtime} runs as {user}"
        );
        assert!(
            user.split(':').all(|id| id.parse::<u32>().is_ok()),
            "numeric USER: {user}"
        );
    }
    // Port, healthcheck and env agree with the server's flags and routes.
    let base = stage("runtime-base").join("\n");
    let env_addr = base
        .split("PROMPTD_ADDR=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let env_grpc = base
        .split("PROMPTD_GRPC_ADDR=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let expose = base
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap();
    for addr in [env_addr, env_grpc] {
        assert!(
            expose
                .split_whitespace()
                .any(|p| p == port_of(addr).to_string()),
            "EXPOSE {expose} lacks {addr}"
        );
    }
    let health = base.lines().find(|l| l.starts_with("HEALTHCHECK")).unwrap();
    assert!(
        health.contains(&format!("http://127.0.0.1:{}/healthz", port_of(env_addr))),
        "{health}"
    );
    for line in stages.iter().flat_map(|(_, lines)| lines) {
        for word in line.split_whitespace() {
            if let Some(var) = word
                .strip_prefix("PROMPTD_")
                .and_then(|w| w.split('=').next())
            {
                let var = format!("PROMPTD_{var}");
                assert!(
                    help.contains(&format!("[env: {var}=")),
                    "{var} is not a serve flag"
                );
            }
        }
    }

    // The CPU image carries every libtorch library the CPU binary loads.
    let cpu = stage("runtime-cpu").join("\n");
    let lib_dirs = [
        repo().join(".libtorch/torch/lib"),
        repo().join(".libtorch/nvidia/cu13/lib"),
    ];
    let mut todo = needed(Path::new(env!("CARGO_BIN_EXE_promptd")));
    let mut seen = BTreeSet::new();
    while let Some(lib) = todo.pop() {
        if !seen.insert(lib.clone()) {
            continue;
        }
        let Some(path) = lib_dirs.iter().map(|d| d.join(&lib)).find(|p| p.exists()) else {
            continue; // a system library of the base image
        };
        let copied = cpu.contains(&format!("torch/lib/{lib}"))
            || (path.starts_with(&lib_dirs[1]) && cpu.contains(".libtorch/nvidia/cu13/lib/"));
        assert!(copied, "runtime-cpu does not copy {lib}");
        todo.extend(needed(&path));
    }
    assert!(
        seen.contains("libtorch_cpu.so") && seen.contains("libcudart.so.13"),
        "{seen:?}"
    );

    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for dir in ["target", ".libtorch", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == dir),
            ".dockerignore lacks {dir}"
        );
    }
}

/// The objects of one deploy folder.
fn objects_in(folder: &str) -> Vec<Value> {
    objects()
        .into_iter()
        .filter(|(path, _)| path.parent().is_some_and(|p| p.ends_with(folder)))
        .map(|(_, o)| o)
        .collect()
}

#[test]
fn the_object_store_deployment_matches_the_server() {
    let objects = objects_in("kubernetes-s3");
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes-s3"))
            .clone()
    };
    let deployment = find("Deployment", "promptd");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["args"][0] == "serve")
        .expect("a container running promptd serve")
        .clone();
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 3);
    // No shared volume: the store is the shared state.
    for v in pod["volumes"].as_array().into_iter().flatten() {
        assert!(v.get("persistentVolumeClaim").is_none(), "{v:?}");
    }
    assert!(!objects.iter().any(|o| o["kind"] == "PersistentVolumeClaim"));
    // Every flag is a real flag of `promptd serve`, and the store is a bucket.
    let help = serve_help();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} <")),
            "{flag} is not a serve flag"
        );
    }
    assert!(
        args.iter().any(|a| a.starts_with("--store=s3://")),
        "{args:?}"
    );
    // Credentials come from the Secret, the endpoint from a ConfigMap; both exist here.
    let from: Vec<(String, String)> = container["envFrom"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            [("secretRef", "Secret"), ("configMapRef", "ConfigMap")]
                .into_iter()
                .filter_map(|(r, kind)| {
                    Some((kind.to_string(), e[r]["name"].as_str()?.to_string()))
                })
        })
        .collect();
    let secret = from
        .iter()
        .find(|(k, _)| k == "Secret")
        .expect("credentials from a Secret");
    let s = find("Secret", &secret.1);
    let keys = s["stringData"]
        .as_object()
        .or(s["data"].as_object())
        .unwrap();
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(keys.contains_key(key), "{key} missing from the Secret");
    }
    let store_env: Vec<String> = from
        .iter()
        .filter(|(k, _)| k == "ConfigMap")
        .flat_map(|(_, name)| {
            find("ConfigMap", name)["data"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        store_env.iter().any(|k| k == "AWS_ENDPOINT"),
        "{store_env:?}"
    );
    for kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"] {
        assert!(objects.iter().any(|o| o["kind"] == kind), "no {kind}");
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(container.get(probe).is_some(), "no {probe}");
    }
}
