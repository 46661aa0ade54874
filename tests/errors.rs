//! Bad input gets one clear line and a non-zero exit, never a panic or a partial file.

mod common;

use std::process::Command;

use common::{profiler_bin, run_profiler, temp_dir};

fn single_error_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn unprivileged_record_names_the_missing_capabilities() {
    let dir = temp_dir();
    let output = dir.path().join("never.rec");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let result = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(profiler_bin())
        .args(["record", "-d", "1", "-o", output.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(result.status.code(), Some(1));
    let stderr = single_error_line(&result);
    assert!(stderr.contains("CAP_BPF") && stderr.contains("sudo"), "{stderr}");
    assert!(!output.exists(), "no file on failure");
}

#[test]
fn truncated_garbage_and_missing_files_are_refused() {
    let dir = temp_dir();
    let good = dir.path().join("good.rec");
    let recording = profiler::recording::Recording::default();
    profiler::recording::write_file(&good, &recording).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.rec");
    std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
    let garbage = dir.path().join("garbage.rec");
    std::fs::write(&garbage, b"#!/bin/sh\necho this is not a recording\n").unwrap();
    let missing = dir.path().join("missing.rec");

    for (path, expected) in
        [(&truncated, "truncated recording"), (&garbage, "not a profiler recording"), (&missing, "No such file")]
    {
        let result = run_profiler(&["report", path.to_str().unwrap()]);
        assert_eq!(result.status.code(), Some(1));
        let stderr = single_error_line(&result);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let result = run_profiler(&["report", good.to_str().unwrap(), "--json"]);
    assert!(result.status.success());
    let json: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(json["events"], 0);
}

#[test]
fn unknown_options_and_bad_values_are_usage_errors() {
    for args in [&["record", "--frobnicate"][..], &["record", "-d", "soon"], &["record", "--probes", "gpu"], &["nope"]]
    {
        let result = run_profiler(args);
        assert_eq!(result.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(stderr.starts_with("error:") && !stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn missing_cgroup_is_one_line() {
    let result =
        run_profiler(&["record", "-d", "1", "--cgroup", "/sys/fs/cgroup/no-such-group", "-o", "/tmp/never.rec"]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = single_error_line(&result);
    assert!(stderr.contains("no-such-group"), "{stderr}");
}

#[test]
fn flamegraph_without_the_cpu_probe_is_refused_before_recording() {
    let dir = temp_dir();
    let output = dir.path().join("never.rec");
    let svg = dir.path().join("never.svg");
    let result = run_profiler(&[
        "record",
        "-d",
        "1",
        "--probes",
        "sched",
        "-o",
        output.to_str().unwrap(),
        "--flamegraph",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = single_error_line(&result);
    assert!(stderr.contains("cpu probe"), "{stderr}");
    assert!(!output.exists() && !svg.exists());
}

#[test]
fn both_syscall_probes_at_once_are_refused_before_recording() {
    let dir = temp_dir();
    let output = dir.path().join("never.rec");
    for command in ["record", "serve"] {
        let mut args = vec![command, "--probes", "syscalls,syscall-counts"];
        if command == "record" {
            args.extend(["-d", "1", "-o", output.to_str().unwrap()]);
        }
        let result = run_profiler(&args);
        assert_eq!(result.status.code(), Some(1), "{command}");
        let stderr = single_error_line(&result);
        assert!(stderr.contains("choose one"), "{stderr}");
    }
    assert!(!output.exists());
}
