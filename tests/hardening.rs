//! Hostile input, signals, stalled clients and odd output nodes: each defect found by trying to
//! break the profiler, as a regression test that runs the real binary.

mod common;

use std::{
    ffi::OsStr,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::{ffi::OsStrExt as _, fs::FileTypeExt as _, fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Recorder, Server, Workload, profiler_bin, promtool_accepts, record_workload, run_profiler, temp_dir};
use profiler::recording::{self, Recording};

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One line on stderr, no panic.
fn one_clear_line(output: &std::process::Output) -> String {
    let stderr = stderr_of(output);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    stderr.trim_end().to_string()
}

/// A small recording of the run-queue and syscall probes, for the tests that read one.
fn small_recording(dir: &Path) -> PathBuf {
    let rec = dir.join("small.rec");
    record_workload(&rec, &["syscalls", "--getppid", "100", "--fail-open", "3"], &["--probes", "sched,syscalls"]);
    rec
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs the profiler and waits at most `limit`, killing it past that (the test then fails).
fn run_within(args: &[&str], limit: Duration) -> std::process::Output {
    let mut child =
        Command::new(profiler_bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("profiler {args:?} still running after {limit:?}: {}", stderr_of(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Reads from a connection until the server closes it; returns how long that took (None if it
/// stayed open for `limit`).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(started.elapsed()),
            Err(_) => return None,
        }
    }
}

#[test]
fn serve_closes_stalled_connections_and_stops_within_two_seconds() {
    let server = Server::start(&[]);
    // Slowloris: half a request, then nothing.
    let mut partial = TcpStream::connect(&server.addr).unwrap();
    partial.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    // Connected and silent.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    // A whole request on a keep-alive connection, then idle.
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    write!(idle, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    for (name, stream) in [("half-sent", &mut partial), ("silent", &mut silent), ("keep-alive", &mut idle)] {
        let closed = closed_within(stream, Duration::from_secs(20));
        let closed = closed.unwrap_or_else(|| panic!("the {name} connection stayed open 20 s"));
        assert!(closed < Duration::from_secs(12), "the {name} connection closed after {closed:?}");
    }

    // At most 64 connections at once: the 65th is closed as soon as it is accepted.
    let held: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&server.addr).unwrap();
    let closed = closed_within(&mut extra, Duration::from_secs(3)).expect("the 65th connection was served");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    drop(held);

    // SIGTERM while clients hold requests half-sent: the server detaches and exits at once.
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = server.stop_within(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    drop(stalled);
}

#[test]
fn outputs_write_through_devices_fifos_and_symlinks() {
    let dir = temp_dir();
    let rec = small_recording(dir.path());
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&rec), 0o600, "recordings are private, as perf.data is");

    // A device: written through, never replaced by a file.
    let result = run_profiler(&["export", "prometheus", path_str(&rec), "-o", "/dev/null"]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    let result = run_profiler(&["record", "-d", "1", "--probes", "sched", "-q", "-o", "/dev/null"]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    // A FIFO: written through to its reader.
    let fifo = dir.path().join("metrics.fifo");
    nix_mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let result = run_profiler(&["export", "prometheus", path_str(&rec), "-o", path_str(&fifo)]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    assert!(reader.join().unwrap().contains("profiler_syscalls_total"));
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    // A symlink: followed, its target replaced, the link kept.
    let target = dir.path().join("target.prom");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("link.prom");
    std::os::unix::fs::symlink("target.prom", &link).unwrap();
    let result = run_profiler(&["export", "prometheus", path_str(&rec), "-o", path_str(&link)]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&target).unwrap().contains("profiler_syscalls_total"));

    // `-` and /dev/stdout: standard output, a pipe here.
    for out in ["-", "/dev/stdout"] {
        let result = run_profiler(&["export", "prometheus", path_str(&rec), "-o", out]);
        assert!(result.status.success(), "{}", stderr_of(&result));
        let text = String::from_utf8(result.stdout).unwrap();
        assert!(text.contains("profiler_syscalls_total"), "the exposition on stdout for -o {out}");
    }

    // Other outputs honour the umask.
    let shared = dir.path().join("shared.prom");
    let result = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 027; exec {} export prometheus {} -o {}",
            profiler_bin().display(),
            rec.display(),
            shared.display()
        ))
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr_of(&result));
    assert_eq!(mode(&shared), 0o640);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "no temporary left: {names:?}");
}

fn nix_mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn an_unwritable_output_fails_at_once() {
    let dir = temp_dir();
    let result = run_within(&["record", "-d", "600", "-o", "/missing/dir/x.rec"], Duration::from_secs(20));
    assert_eq!(result.status.code(), Some(1));
    assert_eq!(
        one_clear_line(&result),
        "profiler: error: cannot write in /missing/dir: No such file or directory (os error 2)"
    );
    let result = run_within(&["record", "-d", "600", "-o", path_str(dir.path())], Duration::from_secs(20));
    assert_eq!(result.status.code(), Some(1));
    assert_eq!(
        one_clear_line(&result),
        format!("profiler: error: cannot write {}: it is a directory", dir.path().display())
    );
    let svg = run_within(
        &["record", "-d", "600", "-o", path_str(&dir.path().join("x.rec")), "--flamegraph", "/missing/x.svg"],
        Duration::from_secs(20),
    );
    assert_eq!(svg.status.code(), Some(1));
    assert!(one_clear_line(&svg).contains("cannot write in /missing"));
    assert!(!dir.path().join("x.rec").exists());
}

#[test]
fn huge_values_full_disks_and_closed_pipes_do_not_panic() {
    let dir = temp_dir();
    let rec = small_recording(dir.path());
    for args in [
        &["record", "-d", "1e20"][..],
        &["record", "-d", "99999999999999999999"],
        &["serve", "--interval", "99999999999999999999"],
        &["serve", "--interval", "1ms"],
        &["diff", path_str(&rec), path_str(&rec), "--threshold", "NaN"],
        &["diff", path_str(&rec), path_str(&rec), "--threshold", "inf"],
    ] {
        let result = run_profiler(args);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {}", stderr_of(&result));
        let stderr = stderr_of(&result);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    // Standard output on a full disk: an error, not a panic.
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    for (args, code) in [
        (vec!["report", path_str(&rec)], 1),
        (vec!["report", path_str(&rec), "--json"], 1),
        (vec!["export", "prometheus", path_str(&rec)], 1),
        (vec!["diff", path_str(&rec), path_str(&rec)], 2),
    ] {
        let result = Command::new(profiler_bin()).args(&args).stdout(full()).output().unwrap();
        assert_eq!(result.status.code(), Some(code), "{args:?}");
        assert!(one_clear_line(&result).contains("cannot write to standard output"), "{args:?}");
    }
    let result = run_profiler(&["record", "-d", "1", "--probes", "sched", "-q", "-o", "/dev/full"]);
    assert_eq!(result.status.code(), Some(1));
    assert!(one_clear_line(&result).contains("cannot write /dev/full"));

    // A reader that went away (`report | head -1`): the end coreutils give, SIGPIPE, and silence.
    let (read_end, write_end) = std::io::pipe().unwrap();
    drop(read_end);
    let result = Command::new(profiler_bin()).args(["report", path_str(&rec)]).stdout(write_end).output().unwrap();
    assert_eq!(result.status.signal(), Some(libc::SIGPIPE), "{}", stderr_of(&result));
    assert_eq!(stderr_of(&result), "");
}

/// The name any user can give a process: a newline that splits report rows and folded lines,
/// quotes and braces that end Prometheus labels, and an escape sequence for the terminal.
const HOSTILE: &[u8] = b"q\"}\n1 x{a=\"\x1b[31m";

#[test]
fn hostile_process_names_are_escaped_everywhere() {
    let dir = temp_dir();
    let binary = dir.path().join(OsStr::from_bytes(HOSTILE));
    std::fs::copy(common::workload_bin(), &binary).unwrap();
    let mut workload = Workload::spawn_binary(&binary, &["hot", "--seconds", "2"]);
    let rec = dir.path().join("hostile.rec");
    let pid = workload.pid().to_string();
    let recorder = Recorder::start(&rec, &["-p", &pid, "--probes", "sched,syscalls,cpu"]);
    workload.go();
    workload.wait();
    let recording = recorder.finish();
    // The kernel keeps the first 15 bytes of the name.
    let comm = &HOSTILE[..15];
    assert!(recording.processes.values().any(|p| p.comm.as_bytes() == comm), "{:?}", recording.processes);

    let report = run_profiler(&["report", path_str(&rec)]);
    assert!(report.status.success());
    let text = String::from_utf8(report.stdout).unwrap();
    assert!(!text.contains('\x1b'), "a raw escape reached the terminal:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("1 x{")), "a name split a row:\n{text}");
    assert!(text.contains("q\"}\\x0a1 x{a=\"\\x1b[31"), "{text}");

    let json = run_profiler(&["report", path_str(&rec), "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
    let comms = value["cpu"]["processes"].as_array().unwrap();
    assert!(comms.iter().any(|p| p["comm"].as_str().unwrap().as_bytes() == comm), "{value}");

    let svg = dir.path().join("hostile.svg");
    let result = run_profiler(&["flamegraph", path_str(&rec), "-o", path_str(&svg)]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let mut reader = quick_xml::Reader::from_str(&svg_text);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("the SVG is not well-formed XML: {e}"),
        }
    }
    assert!(!svg_text.contains('\x1b'));

    let folded = run_profiler(&["export", "folded", path_str(&rec)]);
    let folded = String::from_utf8(folded.stdout).unwrap();
    assert!(!folded.is_empty());
    for line in folded.lines() {
        let (_, count) = line.rsplit_once(' ').unwrap();
        assert!(count.parse::<u64>().is_ok(), "one stack per line: {line:?}");
        assert!(line.starts_with("q\"}\\x0a1 x{a=\"\\x1b[31"), "{line:?}");
    }

    let prom = dir.path().join("hostile.prom");
    let result = run_profiler(&["export", "prometheus", path_str(&rec), "--top-processes", "3", "-o", path_str(&prom)]);
    assert!(result.status.success());
    let exposition = std::fs::read_to_string(&prom).unwrap();
    assert!(exposition.contains("profiler_process_runqueue_latency"), "{exposition}");
    promtool_accepts(&exposition);
}

/// Per-process series under churn: processes of five names with changing shares of the waits
/// start and exit while Prometheus-style scrapes read the page; no counter may go down.
#[test]
fn prometheus_counters_never_decrease_under_churn() {
    let dir = temp_dir();
    let names = ["alpha", "bravo", "charlie", "delta", "echo"];
    let binaries: Vec<PathBuf> = names
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            std::fs::copy(common::workload_bin(), &path).unwrap();
            path
        })
        .collect();
    let server = Server::start(&["--top-processes", "2", "--probes", "sched"]);
    let churn = std::thread::spawn(move || {
        for round in 0..12 {
            let mut children = Vec::new();
            for (i, binary) in binaries.iter().enumerate() {
                // A different name leads each round.
                let threads = 1 + (i + round) % names.len();
                let mut child = Workload::spawn_binary(
                    binary,
                    &["spin", "--threads", &threads.to_string(), "--seconds", "0.8", "--sleep-us", "200"],
                );
                child.go();
                children.push(child);
            }
            children.into_iter().for_each(Workload::wait);
        }
    });
    let mut last: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let mut decreases = Vec::new();
    let mut scrapes = 0;
    while !churn.is_finished() {
        let (status, body) = common::http_get(&server.addr, "/metrics", None);
        assert_eq!(status, 200);
        scrapes += 1;
        for line in body.lines().filter(|l| l.starts_with("profiler_process_runqueue_latency")) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            if let Some(&before) = last.get(series)
                && value < before
            {
                decreases.push(format!("{series}: {before} -> {value}"));
            }
            last.insert(series.to_string(), value);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    churn.join().unwrap();
    assert!(scrapes >= 10, "{scrapes} scrapes");
    assert!(last.keys().any(|k| k.contains("comm=\"other\"")), "{last:?}");
    assert!(decreases.is_empty(), "counters went down: {decreases:#?}");
    assert!(server.stop().success());
}

#[test]
fn sighup_ends_the_recording_cleanly() {
    let dir = temp_dir();
    let rec = dir.path().join("hup.rec");
    let recorder = Recorder::start(&rec, &["--probes", "sched,syscalls"]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, stderr) = recorder.stop_with(libc::SIGHUP);
    assert!(status.success(), "{status}: {stderr}");
    let recording = recording::read_file(&rec).expect("a whole recording");
    assert!(recording.counters.sched_switches > 0);
}

#[test]
fn readers_refuse_devices_fifos_and_lying_headers() {
    let dir = temp_dir();
    let fifo = dir.path().join("x.fifo");
    nix_mkfifo(&fifo);
    for path in ["/dev/zero", path_str(&fifo), path_str(dir.path())] {
        let result = run_within(&["report", path], Duration::from_secs(10));
        assert_eq!(result.status.code(), Some(1));
        assert!(one_clear_line(&result).ends_with("not a regular file: give the path of a recording"), "{path}");
    }
    // A small file declaring a small body that inflates to 256 MiB.
    let mut bomb = recording::frame(&vec![0u8; 256 << 20]);
    bomb[24..32].copy_from_slice(&1000u64.to_le_bytes());
    let bomb_path = dir.path().join("bomb.rec");
    std::fs::write(&bomb_path, &bomb).unwrap();
    assert!(bomb.len() < 1 << 20);
    let result = run_within(&["report", path_str(&bomb_path)], Duration::from_secs(10));
    assert_eq!(result.status.code(), Some(1));
    assert!(one_clear_line(&result).contains("inflates to more or less than its declared 1000 bytes"));

    let mut trailing = recording::write(&Recording::default());
    trailing.extend_from_slice(b"extra");
    let trailing_path = dir.path().join("trailing.rec");
    std::fs::write(&trailing_path, &trailing).unwrap();
    let result = run_profiler(&["report", path_str(&trailing_path)]);
    assert_eq!(result.status.code(), Some(1));
    assert!(one_clear_line(&result).contains("5 bytes of trailing data"));
}

#[test]
fn small_ones() {
    let dir = temp_dir();
    let rec = small_recording(dir.path());
    // A temporary left by a writer killed during fsync is removed by the next write there.
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait_with_output().unwrap();
    let stale = dir.path().join(format!(".profiler-{dead_pid}-AbCdEf.tmp"));
    std::fs::write(&stale, "partial").unwrap();
    let result = run_profiler(&["export", "prometheus", path_str(&rec), "-o", path_str(&dir.path().join("x.prom"))]);
    assert!(result.status.success());
    assert!(!stale.exists(), "the stale temporary is still there");

    // The reason once, not "Is a directory (os error 21): Is a directory (os error 21)".
    let result = run_profiler(&["export", "prometheus", path_str(&rec), "-o", path_str(dir.path())]);
    let line = one_clear_line(&result);
    assert_eq!(line.matches("directory").count(), 1, "{line}");

    // serve's privilege error does not speak of recording.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let result = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(profiler_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(result.status.code(), Some(1));
    let line = one_clear_line(&result);
    assert!(line.contains("CAP_BPF") && !line.contains("recording"), "{line}");
}

#[test]
fn the_profiler_leaves_itself_out_unless_asked() {
    let dir = temp_dir();
    let tgids_of = |recording: &Recording| -> std::collections::BTreeSet<u32> {
        let syscalls = recording.syscalls.as_ref().unwrap();
        syscalls.per_process.iter().map(|row| row.tgid).collect()
    };
    for include_self in [false, true] {
        let rec = dir.path().join(format!("self-{include_self}.rec"));
        let mut args = vec!["--probes", "sched,syscalls"];
        if include_self {
            args.push("--include-self");
        }
        let recorder = Recorder::start(&rec, &args);
        let own = recorder.pid() as u32;
        std::thread::sleep(Duration::from_secs(6)); // past the first drain, which makes syscalls
        let recording = recorder.finish();
        assert_eq!(tgids_of(&recording).contains(&own), include_self, "include_self {include_self}");
        assert_eq!(recording.runq.as_ref().unwrap().per_process.contains_key(&own), include_self);
        let report = String::from_utf8(run_profiler(&["report", path_str(&rec)]).stdout).unwrap();
        let said = report.contains("Filter: the profiler's own process left out (--include-self keeps it)");
        assert_eq!(said, !include_self, "{report}");
    }
}

#[test]
fn the_window_is_the_one_asked_for() {
    // Both CPUs busy, so the session's loop is late to wake at the deadline.
    let mut burn = Workload::spawn(&["burn", "--threads", "4", "--millions", "100000"]);
    burn.go();
    let dir = temp_dir();
    let rec = dir.path().join("window.rec");
    let result = run_profiler(&["record", "-d", "3", "-q", "-o", path_str(&rec)]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    let recording = recording::read_file(&rec).unwrap();
    let window = Duration::from_nanos(recording.meta.duration_ns);
    assert!(window >= Duration::from_secs(3) && window < Duration::from_millis(3020), "window {window:?}");
    drop(burn);
}

#[test]
fn the_recording_ends_when_its_targets_exit() {
    let dir = temp_dir();
    let rec = dir.path().join("targets.rec");
    let mut workload = Workload::spawn(&["hot", "--seconds", "1"]);
    let pid = workload.pid().to_string();
    let recorder = Recorder::start(&rec, &["-p", &pid, "--probes", "sched,syscalls,cpu"]);
    workload.go();
    workload.wait();
    let ended = Instant::now();
    let (status, _, stderr) = recorder.wait();
    assert!(status.success(), "{stderr}");
    assert!(ended.elapsed() < Duration::from_secs(5), "ended {:?} after its target", ended.elapsed());
    assert!(stderr.contains("every process asked for with -p has exited"), "{stderr}");
    let recording = recording::read_file(&rec).unwrap();
    assert!(recording.stacks.unwrap().samples() > 50);
}

/// Restores a sysctl when dropped, whatever the test did.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, value).unwrap();
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

#[test]
fn hidden_kernel_addresses_are_said_at_start() {
    let dir = temp_dir();
    let rec = dir.path().join("kptr.rec");
    let hidden = {
        let _restrict = Sysctl::set("/proc/sys/kernel/kptr_restrict", "2");
        run_profiler(&["record", "-d", "1", "--probes", "cpu", "-q", "-o", path_str(&rec)])
    };
    assert!(hidden.status.success(), "{}", stderr_of(&hidden));
    let stderr = stderr_of(&hidden);
    assert_eq!(stderr.matches("kernel addresses are hidden (kernel.kptr_restrict = 2").count(), 1, "{stderr}");
    let visible = run_profiler(&["record", "-d", "1", "--probes", "cpu", "-q", "-o", path_str(&rec)]);
    assert!(!stderr_of(&visible).contains("hidden"), "{}", stderr_of(&visible));
}

/// A busy machine sampled fast for a while: every sample keeps its stacks (the frame maps are
/// drained before they fill), and none is drawn as an empty stack.
#[test]
fn busy_recordings_keep_every_stack() {
    let dir = temp_dir();
    let rec = dir.path().join("busy.rec");
    let mut load = vec![
        Workload::spawn(&["hot", "--seconds", "8"]),
        Workload::spawn(&["read-zero", "--seconds", "8"]),
        Workload::spawn(&["short-lived", "--children", "300", "--millis", "20"]),
    ];
    load.iter_mut().for_each(Workload::go);
    let result = run_profiler(&["record", "-d", "8", "-F", "2000", "--probes", "cpu", "-q", "-o", path_str(&rec)]);
    assert!(result.status.success(), "{}", stderr_of(&result));
    load.into_iter().for_each(Workload::wait);
    let recording = recording::read_file(&rec).unwrap();
    let stacks = recording.stacks.as_ref().unwrap();
    assert!(stacks.samples() > 10_000, "{} samples", stacks.samples());
    assert_eq!(recording.counters.drops.stack_errors, 0);
    assert_eq!(recording.counters.drops.samples, 0);
    let empty: u64 = stacks.stacks.iter().filter(|s| s.frames.is_empty()).map(|s| s.count).sum();
    assert_eq!(empty, 0, "samples without a frame");
    let lost: u64 = stacks
        .stacks
        .iter()
        .filter(|s| s.frames.iter().any(|&f| stacks.frame(f).is_some_and(|f| f.function == "[lost]")))
        .map(|s| s.count)
        .sum();
    assert_eq!(lost, 0);
}
