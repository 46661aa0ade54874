//! The fleet manifests are checked offline: they parse, and the fields that make the DaemonSet
//! work (host PID namespace, capabilities, kernel mounts, limits, the metrics port) are there and
//! agree with the Service, the PodMonitor and the scrape configs (Prometheus for metrics, Parca and
//! Grafana Alloy for CPU profiles). The dashboard queries only metrics the profiler exports.

use std::path::PathBuf;

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

fn load(file: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&std::fs::read_to_string(deploy(file)).unwrap()).expect("valid YAML")
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn daemonset_has_what_the_probes_need() {
    let docs = load("daemonset.yaml");
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let selector = &ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"];
    assert_eq!(selector, &ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]);
    let container = &pod["containers"][0];
    assert!(container["image"].as_str().is_some());
    let args: Vec<&str> = container["args"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args[0], "serve");
    assert!(args.contains(&"0.0.0.0:9924"), "listens beyond loopback inside the pod");
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(9924));
    let caps: Vec<&str> =
        container["securityContext"]["capabilities"]["add"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert!(caps.contains(&"BPF") && caps.contains(&"PERFMON"));
    let mounts: Vec<&str> =
        container["volumeMounts"].as_vec().unwrap().iter().filter_map(|m| m["mountPath"].as_str()).collect();
    for needed in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/cgroup", "/tmp"] {
        assert!(mounts.contains(&needed), "mount {needed}");
    }
    let volumes: Vec<&str> = pod["volumes"].as_vec().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    for mount in container["volumeMounts"].as_vec().unwrap() {
        assert!(volumes.contains(&mount["name"].as_str().unwrap()), "every mount has a volume");
    }
    for limit in ["cpu", "memory"] {
        assert!(!container["resources"]["limits"][limit].is_badvalue(), "limit {limit}");
        assert!(!container["resources"]["requests"][limit].is_badvalue(), "request {limit}");
    }
}

#[test]
fn service_podmonitor_and_scrape_config_find_the_pods() {
    let ds = load("daemonset.yaml");
    let labels = &kind(&ds, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    let service = &load("service.yaml")[0];
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/name"], labels["app.kubernetes.io/name"]);
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(9924));
    let monitor = &load("podmonitor.yaml")[0];
    assert_eq!(monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], labels["app.kubernetes.io/name"]);
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"].as_str(), Some("metrics"));
    let scrape = &load("prometheus-scrape.yaml")[0];
    let job = &scrape["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"].as_str(), Some("pod"));
    assert!(job["relabel_configs"].as_vec().unwrap().iter().any(|r| r["regex"].as_str() == Some("profiler")));
}

/// The longest profile window `serve` gives (`seconds`), and the path it serves profiles on.
const MAX_PROFILE_SECONDS: u64 = 300;
const PROFILE_PATH: &str = "/debug/pprof/profile";

fn seconds(duration: &str) -> u64 {
    duration.strip_suffix('s').and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("a duration in s: {duration}"))
}

#[test]
fn parca_scrapes_only_the_cpu_profile_of_the_daemonset() {
    let args: Vec<String> =
        kind(&load("daemonset.yaml"), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
    assert!(!args.iter().any(|a| a == "--probes"), "the default probes, the cpu probe among them: {args:?}");
    let job = &load("parca-scrape.yaml")[0]["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"].as_str(), Some("pod"));
    assert_eq!(job["kubernetes_sd_configs"][0]["namespaces"]["names"][0].as_str(), Some("profiler"));
    let keeps: Vec<&str> =
        job["relabel_configs"].as_vec().unwrap().iter().filter_map(|r| r["regex"].as_str()).collect();
    assert_eq!(keeps, ["profiler", "metrics"], "the DaemonSet's pods, on the metrics port");
    let pprof = &job["profiling_config"]["pprof_config"];
    let cpu = &pprof["process_cpu"];
    assert_eq!(
        (cpu["enabled"].as_bool(), cpu["path"].as_str(), cpu["delta"].as_bool()),
        (Some(true), Some(PROFILE_PATH), Some(true))
    );
    // Parca enables these by default; listed, each keeps only what is written.
    for other in ["memory", "block", "goroutine", "mutex"] {
        assert_eq!(pprof[other]["enabled"].as_bool(), Some(false), "{other}");
    }
    // Parca asks for seconds = the interval; its timeout must exceed the interval.
    let (interval, timeout) =
        (seconds(job["scrape_interval"].as_str().unwrap()), seconds(job["scrape_timeout"].as_str().unwrap()));
    assert!(interval <= MAX_PROFILE_SECONDS && timeout > interval, "{interval} s, {timeout} s");
}

/// An Alloy configuration's attributes, as (enclosing blocks, name, value): enough of its syntax
/// (blocks, `name = value` lines, `//` comments) to check what a configuration says.
fn alloy_attributes(text: &str) -> Vec<(String, String, String)> {
    let mut blocks: Vec<String> = Vec::new();
    let mut attributes = Vec::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap().trim();
        if let Some(header) = line.strip_suffix('{') {
            blocks.push(header.trim().to_string());
        } else if line == "}" {
            blocks.pop().expect("balanced braces");
        } else if let Some((name, value)) = line.split_once('=') {
            attributes.push((blocks.join(" / "), name.trim().to_string(), value.trim().trim_matches('"').to_string()));
        }
    }
    assert!(blocks.is_empty(), "unclosed blocks: {blocks:?}");
    attributes
}

#[test]
fn alloy_scrapes_only_the_cpu_profile_into_pyroscope() {
    let attributes = alloy_attributes(&std::fs::read_to_string(deploy("alloy-pyroscope.alloy")).unwrap());
    let get = |block: &str, name: &str| {
        attributes
            .iter()
            .find(|(b, n, _)| b == block && n == name)
            .map(|(_, _, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {block}"))
    };
    assert_eq!(get("discovery.kubernetes \"profiler\"", "role"), "pod");
    let regexes: Vec<&str> = attributes
        .iter()
        .filter(|(b, n, _)| b.ends_with("/ rule") && n == "regex")
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert_eq!(regexes, ["profiler", "metrics"]);
    let scrape = "pyroscope.scrape \"profiler\"";
    assert_eq!(get(scrape, "targets"), "discovery.relabel.profiler.output");
    assert_eq!(get(scrape, "forward_to"), "[pyroscope.write.default.receiver]");
    let cpu = format!("{scrape} / profiling_config / profile.process_cpu");
    assert_eq!((get(&cpu, "enabled"), get(&cpu, "path"), get(&cpu, "delta")), ("true", PROFILE_PATH, "true"));
    let profiles: Vec<&(String, String, String)> =
        attributes.iter().filter(|(b, n, _)| b.contains("/ profile.") && n == "enabled").collect();
    assert!(profiles.len() >= 5, "every profile type Alloy enables by default is named: {profiles:?}");
    for (block, _, enabled) in profiles.iter().filter(|(b, _, _)| !b.ends_with("profile.process_cpu")) {
        assert_eq!(enabled, "false", "{block}");
    }
    // Alloy asks for seconds = delta_profiling_duration, which must be at least 1 s below the
    // interval.
    let (interval, window) =
        (seconds(get(scrape, "scrape_interval")), seconds(get(scrape, "delta_profiling_duration")));
    assert!(window < interval && window <= MAX_PROFILE_SECONDS, "{window} s every {interval} s");
    assert!(get("pyroscope.write \"default\" / endpoint", "url").starts_with("http"));
}

#[test]
fn dashboard_queries_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap()).expect("valid JSON");
    let exported = [
        "profiler_runqueue_latency_seconds_bucket",
        "profiler_syscall_latency_seconds_bucket",
        "profiler_syscalls_total",
        "profiler_syscall_errors_total",
        "profiler_context_switches_total",
        "profiler_dropped_events_total",
        "profiler_latency_p99_zscore",
        "profiler_latency_anomalous",
        "profiler_map_fill_ratio",
        "profiler_drain_duration_seconds",
    ];
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    exprs.push(dashboard["templating"]["list"][1]["query"].as_str().unwrap().to_string());
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile") && e.contains("syscall")), "p99 by syscall");
    assert!(dashboard["panels"].as_array().unwrap().iter().any(|p| p["type"] == "heatmap"));
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("profiler_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(exported.contains(&name), "{name} in {expr} is not a metric the profiler exports");
        }
    }
    // The names above are the ones the exporter really writes.
    let text = profiler::output::prometheus::Exposition::new(&sample_recording(), Default::default()).render();
    for name in &exported[..6] {
        assert!(text.contains(name), "{name} missing from the exposition");
    }
}

fn sample_recording() -> profiler::recording::Recording {
    use profiler::recording::{LatencyHistogram, ProcessSyscall, Recording, RunqLatency, Syscalls};
    let histogram = LatencyHistogram { buckets: vec![(100, 3)] };
    Recording {
        runq: Some(RunqLatency { per_cpu: vec![histogram.clone()], ..Default::default() }),
        syscalls: Some(Syscalls {
            latency: [(0, histogram)].into(),
            per_process: vec![ProcessSyscall {
                tgid: 1,
                nr: 0,
                count: 3,
                errors: 1,
                total_ns: 10,
                errnos: vec![(2, 1)],
                latency: None,
            }],
            counts_only: false,
        }),
        ..Default::default()
    }
}
