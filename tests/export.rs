//! Exports read by the real tools: promtool, Prometheus itself, and `go tool pprof`.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Server, Workload, free_port, go_tool_pprof, http_get, promtool_accepts, record_workload, run_profiler, temp_dir,
};

#[test]
fn prometheus_export_passes_promtool_and_keeps_the_counts() {
    let dir = temp_dir();
    let rec = dir.path().join("x.rec");
    record_workload(&rec, &["syscalls", "--getppid", "3000", "--fail-open", "20"], &["--probes", "sched,syscalls"]);
    let prom = dir.path().join("x.prom");
    let result = run_profiler(&["export", "prometheus", rec.to_str().unwrap(), "-o", prom.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool_accepts(&text);
    assert!(text.contains(r#"profiler_syscalls_total{syscall="getppid"} 3000"#), "{text}");
    assert!(text.contains(r#"profiler_syscall_errors_total{syscall="openat",errno="ENOENT"} 20"#), "{text}");
    assert!(text.contains(r#"profiler_syscall_latency_seconds_bucket{le="+Inf",syscall="getppid"} 3000"#), "{text}");
    assert!(text.contains(r#"profiler_syscall_latency_seconds_count{syscall="getppid"} 3000"#));
}

#[test]
fn pprof_export_lists_the_hot_function_first() {
    let dir = temp_dir();
    let rec = dir.path().join("hot.rec");
    record_workload(&rec, &["hot", "--seconds", "3"], &["--probes", "cpu"]);
    let text = go_tool_pprof(&rec, dir.path(), "-top");
    // After the header, the first row is the function with the most flat samples.
    let first = text.lines().skip_while(|l| !l.trim_start().starts_with("flat")).nth(1).expect("a row");
    assert!(first.ends_with("workload::hot_seventy"), "{text}");
    // pprof's tools take the first mapping as the main binary: the program's, not the kernel's.
    assert!(text.lines().any(|l| l == "File: workload"), "{text}");
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn serve_exposes_live_metrics_and_survives_a_scrape_flood() {
    let server = Server::start(&["--top-processes", "3"]);
    let (status, page) = http_get(&server.addr, "/metrics", None);
    assert_eq!(status, 200);
    promtool_accepts(&page);
    assert!(page.contains("profiler_runqueue_latency_seconds_bucket"));
    // sched: wakeup, wakeup_new, switch, thread exit; syscalls: enter, exit, thread exit.
    assert_eq!(metric_value(&page, "profiler_programs_attached"), 7.0);
    let (status, openmetrics) = http_get(&server.addr, "/metrics", Some("application/openmetrics-text"));
    assert_eq!(status, 200);
    assert!(openmetrics.trim_end().ends_with("# EOF"));
    assert_eq!(http_get(&server.addr, "/no/such/path", None).0, 404);

    let events_before = metric_value(&page, "profiler_events");
    let started = Instant::now();
    for _ in 0..300 {
        assert_eq!(http_get(&server.addr, "/metrics", None).0, 200);
    }
    let flood = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let (_, later) = http_get(&server.addr, "/metrics", None);
    assert!(metric_value(&later, "profiler_events") > events_before, "probes keep counting during the flood");
    assert_eq!(metric_value(&later, "profiler_dropped_events_total{reason=\"start_time_map\"}"), 0.0);
    eprintln!("300 scrapes in {flood:?}");
    assert!(server.stop().success(), "SIGTERM exits 0");
}

/// `serve --probes syscall-counts`: the call and error counters, one program, and no latency
/// series (absent, not zero).
#[test]
fn serve_counts_syscalls_without_latency_series() {
    let server = Server::start(&["--probes", "syscall-counts"]);
    let mut workload = Workload::spawn(&["syscalls", "--getppid", "1000", "--fail-open", "10"]);
    workload.go();
    workload.wait();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, page) = http_get(&server.addr, "/metrics", None);
    assert_eq!(status, 200);
    promtool_accepts(&page);
    assert_eq!(metric_value(&page, "profiler_programs_attached"), 1.0);
    assert!(metric_value(&page, "profiler_syscalls_total{syscall=\"getppid\"}") >= 1000.0);
    assert!(metric_value(&page, "profiler_syscall_errors_total{syscall=\"openat\",errno=\"ENOENT\"}") >= 10.0);
    assert!(!page.contains("profiler_syscall_latency"), "no latency series");
    assert!(!page.contains("profiler_runqueue_latency"), "only the probe asked for");
    assert!(server.stop().success());
}

#[test]
fn a_real_prometheus_scrapes_serve_and_answers_histogram_quantile() {
    let dir = temp_dir();
    let server = Server::start(&[]);
    let prometheus_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: profiler\n    static_configs:\n      - targets: ['{}']\n",
            server.addr
        ),
    )
    .unwrap();
    let prometheus_addr = format!("127.0.0.1:{prometheus_port}");
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={prometheus_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package; `cargo xtask setup` installs it)");
    // Contention while Prometheus scrapes: four busy threads on one CPU.
    let workload = Workload::spawn(&["--no-wait", "spin", "--threads", "4", "--cpu", "1", "--seconds", "8"]);
    let query = "histogram_quantile(0.99,%20sum%20by%20(le)%20(rate(profiler_runqueue_latency_seconds_bucket[1m])))";
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut answer = None;
    while Instant::now() < deadline && answer.is_none() {
        std::thread::sleep(Duration::from_secs(1));
        if std::net::TcpStream::connect(&prometheus_addr).is_err() {
            continue; // Prometheus is still starting.
        }
        let (status, body) = http_get(&prometheus_addr, &format!("/api/v1/query?query={query}"), None);
        if status != 200 {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(value) = json["data"]["result"][0]["value"][1].as_str()
            && let Ok(seconds) = value.parse::<f64>()
            && seconds.is_finite()
        {
            answer = Some(seconds);
        }
    }
    workload.wait();
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let p99 = answer.expect("Prometheus answered histogram_quantile within 40 s");
    eprintln!("Prometheus: run-queue p99 = {p99} s");
    assert!((1e-6..20.0).contains(&p99), "plausible p99: {p99} s");
    assert!(p99 >= 0.001, "four threads on one CPU wait milliseconds at p99: {p99} s");
    assert!(server.stop().success());
}
