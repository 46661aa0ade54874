//! `profiler diff` against recordings whose difference is known: none, a slower function, a
//! contended CPU, failing syscalls.

mod common;

use std::path::{Path, PathBuf};

use common::{record_workload, run_profiler, temp_dir};

/// Records one run of the workload `args`, filtered to its process.
fn record(dir: &Path, name: &str, args: &[&str], probes: &str) -> PathBuf {
    let path = dir.join(format!("{name}.rec"));
    record_workload(&path, args, &["--probes", probes]);
    path
}

fn diff_json(base: &Path, new: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["diff", base.to_str().unwrap(), new.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let output = run_profiler(&args);
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code(), serde_json::from_slice(&output.stdout).expect("JSON"))
}

fn flagged(json: &serde_json::Value, kind: &str, subject: &str) -> bool {
    json["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == kind && f["subject"].as_str().unwrap().contains(subject))
}

#[test]
fn steady_workload_is_never_flagged() {
    let dir = temp_dir();
    let runs: Vec<PathBuf> = (0..3)
        .map(|i| record(dir.path(), &format!("steady{i}"), &["hot", "--seconds", "3"], "cpu,sched,syscalls"))
        .collect();
    for (a, b) in [(0, 1), (1, 2), (0, 2), (2, 0)] {
        let (code, json) = diff_json(&runs[a], &runs[b], &["--fail-on-regression"]);
        assert_eq!(json["regressions"].as_array().unwrap().len(), 0, "run {a} vs {b}: {:#}", json["regressions"]);
        assert_eq!(code, Some(0));
    }
}

#[test]
fn a_function_twice_as_slow_is_flagged_and_drawn() {
    let dir = temp_dir();
    let base = record(dir.path(), "base", &["hot", "--seconds", "4"], "cpu");
    let new = record(dir.path(), "new", &["hot", "--seconds", "4", "--thirty-us", "1800"], "cpu");
    let svg = dir.path().join("diff.svg");
    let (code, json) = diff_json(&base, &new, &["--fail-on-regression", "--flamegraph", svg.to_str().unwrap()]);
    assert!(flagged(&json, "function", "workload::hot_thirty"), "{:#}", json["regressions"]);
    assert!(!flagged(&json, "function", "workload::hot_seventy"));
    assert_eq!(code, Some(1));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.trim_end().ends_with("</svg>"));
    assert!(text.contains("workload::hot_thirty"));
    // Growth is drawn red: the grown function's frames have more red than blue.
    let frame = text.split("<title>workload::hot_thirty (").nth(1).expect("frame drawn");
    let fill = frame.split("fill=\"rgb(").nth(1).unwrap().split(')').next().unwrap();
    let rgb: Vec<u32> = fill.split(',').map(|c| c.trim().parse().unwrap()).collect();
    assert!(rgb[0] > rgb[2], "grown frame is red: rgb{rgb:?}");
}

#[test]
fn contention_is_flagged_on_run_queue_latency() {
    let dir = temp_dir();
    // Threads that work 1 ms and sleep 1 ms: one per CPU in BASE, four on one CPU in NEW.
    let duty = ["--seconds", "2", "--busy-us", "1000", "--sleep-us", "1000"];
    let base = record(dir.path(), "alone", &[&["spin", "--threads", "2"][..], &duty].concat(), "sched");
    let new = record(dir.path(), "crowded", &[&["spin", "--threads", "4", "--cpu", "1"][..], &duty].concat(), "sched");
    let (_, json) = diff_json(&base, &new, &[]);
    let p99 = json["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "run-queue latency" && f["metric"] == "p99");
    assert!(p99, "{:#}", json["regressions"]);
}

#[test]
fn failing_syscalls_are_flagged() {
    let dir = temp_dir();
    let base = record(dir.path(), "ok", &["syscalls", "--getppid", "2000", "--fail-open", "0"], "syscalls");
    let new = record(dir.path(), "failing", &["syscalls", "--getppid", "2000", "--fail-open", "500"], "syscalls");
    let (code, json) = diff_json(&base, &new, &["--fail-on-regression"]);
    assert!(flagged(&json, "syscall errors", "openat"), "{:#}", json["regressions"]);
    let detail = json["regressions"].as_array().unwrap().iter().find(|f| f["kind"] == "syscall errors").unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("ENOENT"), "the new errno is named");
    assert_eq!(code, Some(1));
    // The text form lists the regression first.
    let text = run_profiler(&["diff", base.to_str().unwrap(), new.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("REGRESSIONS: ") && text.lines().nth(1).unwrap().contains("openat"), "{text}");
}

#[test]
fn errors_exit_with_two() {
    let output = run_profiler(&["diff", "/nonexistent/a.rec", "/nonexistent/b.rec", "--fail-on-regression"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1);
}
