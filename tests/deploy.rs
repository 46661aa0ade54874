//! The fleet manifests are checked offline: they parse, and the fields that make the DaemonSet
//! work (host PID namespace, capabilities, kernel mounts, limits, the metrics port) are there and
//! agree with the Service, the PodMonitor and the scrape config. The dashboard queries only metrics
//! the profiler exports.

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
