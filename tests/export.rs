//! Exports read by the real tools: promtool, Prometheus itself, and `go tool pprof`.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Server, Workload, free_port, go_tool_pprof, go_tool_pprof_source, http_get, promtool_accepts, record_workload,
    run_profiler, temp_dir,
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
    assert_eq!(top_function(&text), "workload::hot_seventy", "{text}");
    // pprof's tools take the first mapping as the main binary: the program's, not the kernel's.
    assert!(text.lines().any(|l| l == "File: workload"), "{text}");
}

/// The first row of `go tool pprof -top`'s table: the function with the most flat samples.
fn top_function(text: &str) -> &str {
    let first = text.lines().skip_while(|l| !l.trim_start().starts_with("flat")).nth(1).expect("a row");
    first.split_whitespace().last().expect("a function")
}

/// `-top`'s header, "Duration: 5s, Total samples = 4.95s (99.00%)": the profile's duration and
/// the CPU time its samples stand for, in seconds.
fn duration_and_samples(text: &str) -> (f64, f64) {
    let seconds = |value: &str| -> f64 {
        let value = value.trim().trim_end_matches(',');
        match value.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().unwrap() / 1e3,
            None => value.trim_end_matches('s').parse().unwrap(),
        }
    };
    let line = text.lines().find(|l| l.starts_with("Duration: ")).unwrap_or_else(|| panic!("no duration in {text}"));
    let (duration, rest) = line["Duration: ".len()..].split_once(", Total samples = ").expect("a total");
    (seconds(duration), seconds(rest.split_whitespace().next().unwrap()))
}

/// CPU time (user and system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    // utime and stime, the 14th and 15th fields, in clock ticks.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn serve_hands_go_tool_pprof_the_cpu_profile_of_each_window() {
    let dir = temp_dir();
    let mut workload = Workload::spawn(&["hot", "--seconds", "30"]);
    let pid = workload.pid();
    let server = Server::start(&["--pid", &pid.to_string()]);
    workload.go();
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    // Two clients at once, each with its own window on the same probes.
    let url = format!("http://{}/debug/pprof/profile?seconds=5", server.addr);
    let profiles: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2)
            .map(|i| {
                let (url, home) = (&url, dir.path().join(format!("client{i}")));
                scope.spawn(move || {
                    std::fs::create_dir_all(&home).unwrap();
                    go_tool_pprof_source(url, &home, "-top")
                })
            })
            .collect();
        clients.into_iter().map(|client| client.join().unwrap()).collect()
    });
    // The share of a CPU the workload had (all of one on an idle machine): the samples' truth.
    let cpu_share = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    eprintln!("the workload had {:.1} % of a CPU", cpu_share * 100.0);
    assert!(cpu_share > 0.5, "the workload ran: {cpu_share}");
    for text in &profiles {
        assert_eq!(top_function(text), "workload::hot_seventy", "{text}");
        let (duration, sampled) = duration_and_samples(text);
        assert!((4.5..=5.5).contains(&duration), "a 5 s window: {duration} s\n{text}");
        // Each sample stands for one period: the samples times the period is the CPU time seen.
        let expected = duration * cpu_share;
        assert!((sampled - expected).abs() <= 0.1 * expected, "{sampled} s sampled, {expected} s expected\n{text}");
    }
    // Eight windows at once; a ninth request is told to come back.
    let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
        let requests: Vec<_> =
            (0..9).map(|_| scope.spawn(|| http_get(&server.addr, "/debug/pprof/profile?seconds=2", None))).collect();
        requests.into_iter().map(|request| request.join().unwrap()).collect()
    });
    let served = statuses.iter().filter(|(status, _)| *status == 200).count();
    let refused: Vec<&String> = statuses.iter().filter(|(status, _)| *status == 503).map(|(_, body)| body).collect();
    assert_eq!((served, refused.len()), (8, 1), "{statuses:?}");
    assert_eq!(refused[0], "8 profiles are being taken already\n");
    let (status, body) = http_get(&server.addr, "/debug/pprof/profile?seconds=0", None);
    assert_eq!((status, body.as_str()), (400, "seconds must be a whole number from 1 to 300\n"));
    assert_eq!(http_get(&server.addr, "/debug/pprof/profile?seconds=5s", None).0, 400);
    assert_eq!(http_get(&server.addr, "/debug/pprof/heap", None).0, 404);
    assert!(server.stop().success());
}

#[test]
fn serve_without_the_cpu_probe_has_no_profiles() {
    let server = Server::start(&["--probes", "sched"]);
    let (status, body) = http_get(&server.addr, "/debug/pprof/profile?seconds=1", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("the cpu probe is not running"), "{body}");
    assert!(server.stop().success());
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
    // sched: wakeup, wakeup_new, switch, thread exit; syscalls: enter, exit, thread exit; cpu: the
    // sampler, the unwinder it tail-calls, exec.
    assert_eq!(metric_value(&page, "profiler_programs_attached"), 10.0);
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
