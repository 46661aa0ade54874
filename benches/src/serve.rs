//! `serve` as a fleet runs it, for minutes: every default probe (sched, syscalls, cpu), a real
//! Prometheus (Debian's) scraping /metrics and a client pulling a 10 s CPU profile back to back,
//! as Parca or Alloy would, while a shell loop starts about 1 000 of Debian's short-lived programs
//! a minute and the 70/30 workload burns a CPU. Beside it, for the same minutes on the same load,
//! `record` with the same probes. Reports serve's memory over time (it must stay flat: stacks live
//! only in the open profile windows, exited processes fold into per-name totals), both processes'
//! CPU and peak RSS, and how many scrapes and profiles succeeded.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    churn::{processes_started, rss_mb},
    recorder::Usage,
};

/// How often serve's RSS is read, Prometheus scrapes and the profile client asks (Go's and
/// Alloy's 10 s profiles).
const EVERY: Duration = Duration::from_secs(10);
/// Memory before this is warm-up (the first symbolizations, the first folded names).
const WARM_UP: Duration = Duration::from_secs(60);
/// The flatness the fleet issue asks for: RSS after warm-up within 10 % of its value then.
const FLAT: f64 = 0.10;
/// About 1 000 processes a minute: `sh` and `ls`, every ~0.12 s.
const CHURN_LOOP: &str = "while :; do sh -c 'ls /usr/bin > /dev/null'; sleep 0.1; done";

pub fn run(bin: &Path, duration: Duration) -> Result<String> {
    let profiler = bin.join("profiler");
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let processes_before = processes_started()?;
    let mut load = vec![
        Command::new("bash").args(["-c", CHURN_LOOP]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?,
        Command::new(bin.join("workload"))
            .args(["--no-wait", "hot", "--seconds", &(duration.as_secs() + 30).to_string()])
            .spawn()?,
    ];
    let serve = Command::new(&profiler)
        .args(["serve", "--listen", &addr, "--interval", "10s", "--top-processes", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start profiler serve")?;
    let record = Command::new(&profiler)
        .args(["record", "-q", "-o"])
        .arg(dir.path().join("bench-serve.rec"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start profiler record")?;
    wait_for(&addr)?;
    let prometheus_addr = format!("127.0.0.1:{}", free_port()?);
    let mut prometheus = start_prometheus(dir.path(), &addr, &prometheus_addr)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (profiles, profile_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, profiles, profile_bytes, addr) = (stop.clone(), profiles.clone(), profile_bytes.clone(), addr);
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match get(&addr, &format!("/debug/pprof/profile?seconds={}", EVERY.as_secs())) {
                    // A gzipped profile.
                    Ok((200, body)) if body.starts_with(&[0x1f, 0x8b]) => {
                        profiles.fetch_add(1, Ordering::Relaxed);
                        profile_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    }
                    Ok((status, _)) => failures.push(format!("status {status}")),
                    Err(error) => failures.push(format!("{error:#}")),
                }
            }
            failures
        })
    };

    let started = Instant::now();
    let mut rss: Vec<(Duration, f64)> = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(EVERY.min(duration.saturating_sub(started.elapsed())));
        if let Some(mb) = rss_mb(serve.id() as i32) {
            rss.push((started.elapsed(), mb));
        }
    }
    let scrapes = query(&prometheus_addr, "count_over_time(up{job=\"profiler\"}[1h])");
    let up = query(&prometheus_addr, "min_over_time(up{job=\"profiler\"}[1h])");
    // The client's last request ends before serve does.
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().map_err(|_| anyhow::anyhow!("the profile client panicked"))?;
    let serve_usage = Usage::stop(serve.id() as i32)?;
    let record_usage = Usage::stop(record.id() as i32)?;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    for child in &mut load {
        let _ = child.kill();
        let _ = child.wait();
    }
    let processes = processes_started()?.saturating_sub(processes_before);

    let minutes = duration.as_secs_f64() / 60.0;
    let per_minute = processes as f64 / minutes;
    let mut out = format!(
        "## serve for a fleet ({minutes:.0} min)\n\n\
         `profiler serve` with the default probes (sched, syscalls, cpu at 99 Hz, 10 s interval, \
         --top-processes 10), scraped by Debian's Prometheus every 10 s and asked for a 10 s CPU profile \
         back to back; {processes} processes and threads started meanwhile ({per_minute:.0} a minute: sh and \
         ls from a shell loop) beside the 70/30 workload. `profiler record` with the same probes ran for \
         the same minutes on the same load.\n\n| after | serve RSS |\n|---|---|\n"
    );
    for (when, mb) in rss.iter().filter(|(when, _)| when.as_secs() % 60 < EVERY.as_secs()) {
        out.push_str(&format!("| {:.1} min | {mb:.1} MB |\n", when.as_secs_f64() / 60.0));
    }
    let warm = rss.iter().find(|(when, _)| *when >= WARM_UP).map(|&(_, mb)| mb);
    let highest = rss.iter().filter(|(when, _)| *when >= WARM_UP).map(|&(_, mb)| mb).fold(0.0, f64::max);
    let flatness = match warm {
        Some(warm) => {
            let growth = highest / warm - 1.0;
            let met = if growth <= FLAT { "met" } else { "**missed**" };
            format!(
                "after the first minute RSS went from {warm:.1} MB to at most {highest:.1} MB ({:+.1} %; target ≤ +{:.0} %: {met})",
                growth * 100.0,
                FLAT * 100.0
            )
        }
        None => "too short to tell".into(),
    };
    out.push_str(&format!(
        "\nMemory: {flatness}.\n\n| process | CPU seconds | % of one core | peak RSS |\n|---|---|---|---|\n\
         | profiler serve (+ /metrics and 10 s profiles) | {:.1} | {:.2} % | {:.1} MB |\n\
         | profiler record (same probes) | {:.1} | {:.2} % | {:.1} MB |\n\n\
         Prometheus: {} scrapes recorded, `up` never below {}; profiles served: {} ({:.0} KB each on average), \
         {} failed{}.\n",
        serve_usage.cpu_seconds,
        serve_usage.cpu_seconds * 100.0 / duration.as_secs_f64(),
        serve_usage.max_rss_mb,
        record_usage.cpu_seconds,
        record_usage.cpu_seconds * 100.0 / duration.as_secs_f64(),
        record_usage.max_rss_mb,
        scrapes.unwrap_or_else(|| "no".into()),
        up.unwrap_or_else(|| "?".into()),
        profiles.load(Ordering::Relaxed),
        profile_bytes.load(Ordering::Relaxed) as f64 / profiles.load(Ordering::Relaxed).max(1) as f64 / 1e3,
        failures.len(),
        failures.first().map_or(String::new(), |f| format!(" (first: {f})")),
    ));
    Ok(out)
}

fn start_prometheus(dir: &Path, target: &str, listen: &str) -> Result<Child> {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {every}s\n  scrape_timeout: {every}s\nscrape_configs:\n  - job_name: profiler\n    static_configs:\n      - targets: ['{target}']\n",
            every = EVERY.as_secs()
        ),
    )?;
    Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start prometheus (Debian's package; `cargo xtask setup` installs it)")
}

/// The value of an instant query's first result, as Prometheus writes it.
fn query(addr: &str, expr: &str) -> Option<String> {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(addr, &format!("/api/v1/query?query={encoded}")).ok()?;
    let body = String::from_utf8_lossy(&body).into_owned();
    // "value":[1733400000.123,"61"]
    let value = body.split("\"value\":[").nth(1)?.split(',').nth(1)?.trim_matches(|c| c == '"' || c == ']' || c == '}');
    (status == 200).then(|| value.to_string())
}

/// A GET with `Connection: close`: (status, body); chunked bodies are not expected.
fn get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, response[end + 4..].to_vec()))
}

fn wait_for(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("serve did not listen on {addr} within 60 s")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
