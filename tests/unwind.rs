//! Whole user stacks without frame pointers: programs built as distributions build them (C at -O2
//! without frame pointers, Rust's release profile, Debian's own stripped gzip), walked by the
//! kernel-side unwinder from their `.eh_frame`; signal frames; names for stripped binaries from a
//! debug directory and from a real debuginfod server, and a recording that ends promptly when that
//! server is down.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Recorder, temp_dir};
use profiler::{
    analysis::fold::{Selection, folded},
    recording::Recording,
};

const CHAINS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/workload/native/chains.c");

/// Compiles the C workload with gcc -O2 -fomit-frame-pointer (and `extra` flags) into `dir`.
fn chains_binary(dir: &Path, extra: &[&str]) -> PathBuf {
    let binary = dir.join("chains");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer"])
        .args(extra)
        .arg("-o")
        .arg(&binary)
        .arg(CHAINS_SOURCE)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed");
    binary
}

/// Records `command` from its start to its end, filtered to it, with the extra record arguments.
fn record_command(rec: &Path, command: &mut Command, record_args: &[&str]) -> (u32, Recording) {
    // The recorder waits for the command's pid: start the command stopped at a shell's read.
    let mut child = Command::new("sh")
        .args(["-c", "read go && exec \"$0\" \"$@\""])
        .arg(command.get_program())
        .args(command.get_args())
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the workload");
    let pid = child.id();
    let pid_text = pid.to_string();
    let args: Vec<&str> =
        ["-p", pid_text.as_str(), "--probes", "cpu"].into_iter().chain(record_args.iter().copied()).collect();
    let recorder = Recorder::start(rec, &args);
    go(&mut child);
    assert!(child.wait().unwrap().success(), "the workload failed");
    (pid, recorder.finish())
}

fn go(child: &mut Child) {
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

/// Each folded stack of process `pid` (root first, `comm;...;leaf`) with its count.
fn paths(recording: &Recording, pid: u32) -> Vec<(String, u64)> {
    let stacks = recording.stacks.as_ref().expect("stacks");
    folded(recording, stacks, &Selection { pids: vec![pid], user_only: true, ..Default::default() })
        .into_iter()
        .map(|line| {
            let (path, count) = line.rsplit_once(' ').unwrap();
            (path.to_string(), count.parse().unwrap())
        })
        .collect()
}

fn samples(paths: &[(String, u64)], wanted: impl Fn(&str) -> bool) -> u64 {
    paths.iter().filter(|(path, _)| wanted(path)).map(|(_, count)| count).sum()
}

#[test]
fn c_without_frame_pointers_has_whole_call_chains_in_their_shares() {
    let dir = temp_dir();
    let binary = chains_binary(dir.path(), &[]);
    // Long enough that the samples of its first moments, before its tables are in the kernel
    // (walked by frame pointers), are few even in an emulated guest. Each sample falls in an a or
    // b slot as a coin weighted 70/30 falls (the slots are shuffled): at 499 Hz, some 4 000
    // samples put the share within 0.8 % (one standard deviation) of 70 %, and 4 % is five.
    let (pid, recording) = record_command(
        &dir.path().join("chains.rec"),
        Command::new(&binary).args(["chains", "8"]),
        &["--frequency", "499"],
    );
    let paths = paths(&recording, pid);
    let total = samples(&paths, |_| true);
    let chain = |x: &str| format!("__libc_start_call_main;main;outer_{x};middle_{x};leaf_{x}");
    let (a, b) = (chain("a"), chain("b"));
    let whole_a = samples(&paths, |p| p.contains(&a));
    let whole_b = samples(&paths, |p| p.contains(&b));
    eprintln!("{total} samples: {whole_a} whole a, {whole_b} whole b");
    assert!(total >= 2_500, "8 s at 499 Hz: {total} samples");
    assert!((whole_a + whole_b) * 100 >= total * 95, "{} of {total} samples hold a whole chain", whole_a + whole_b);
    let share_a = whole_a as f64 * 100.0 / (whole_a + whole_b) as f64;
    assert!((share_a - 70.0).abs() <= 4.0, "chain a has {share_a:.1} % of the samples, not 70 %");
    assert!(!paths.iter().any(|(p, _)| p.contains("[anon]")), "no junk frames");
}

#[test]
fn a_signal_handler_unwinds_into_the_interrupted_code() {
    let dir = temp_dir();
    let binary = chains_binary(dir.path(), &[]);
    let (pid, recording) =
        record_command(&dir.path().join("signal.rec"), Command::new(&binary).args(["signal", "4"]), &[]);
    let paths = paths(&recording, pid);
    let in_handler = samples(&paths, |p| p.ends_with(";in_handler"));
    let through =
        samples(&paths, |p| p.contains("__libc_start_call_main;main;interrupted_work;__restore_rt;in_handler"));
    eprintln!("{in_handler} samples in the handler, {through} of them unwound through the signal frame");
    assert!(in_handler >= 50, "the handler runs half the time: {in_handler} samples");
    assert!(through * 100 >= in_handler * 90, "{through} of {in_handler}");
}

#[test]
fn debian_gzip_reaches_libc_start_as_perf_dwarf_does() {
    let dir = temp_dir();
    let input = dir.path().join("input");
    let random = Command::new("head").args(["-c", "48000000", "/dev/urandom"]).output().unwrap().stdout;
    std::fs::write(&input, random).unwrap();
    let (pid, recording) =
        record_command(&dir.path().join("gzip.rec"), Command::new("gzip").arg("-9").arg("-c").arg(&input), &[]);
    let paths = paths(&recording, pid);
    let total = samples(&paths, |_| true);
    let whole = samples(&paths, |p| p.contains("__libc_start_call_main;"));
    eprintln!("gzip: {whole} of {total} samples reach __libc_start_call_main");
    assert!(total >= 100, "{total} samples");
    assert!(whole * 100 >= total * 90, "{whole} of {total}");
    // Its functions have no names (stripped) but are one frame each: by function start.
    let frames: std::collections::BTreeSet<&str> =
        paths.iter().flat_map(|(p, _)| p.split(';')).filter(|f| f.starts_with("gzip+0x")).collect();
    assert!(!frames.is_empty() && frames.len() < 60, "per-function frames: {frames:?}");
}

#[test]
fn rust_release_builds_without_frame_pointers_have_whole_stacks() {
    let dir = temp_dir();
    let source = dir.path().join("spin.rs");
    std::fs::write(
        &source,
        "#[inline(never)] fn inner(until: std::time::Instant) -> u64 { let mut x = 1u64; \
           while std::time::Instant::now() < until { for _ in 0..100_000 { x = x.wrapping_mul(6364136223846793005).wrapping_add(1); } } x }\n\
         #[inline(never)] fn outer(until: std::time::Instant) -> u64 { std::hint::black_box(inner(until)) + 1 }\n\
         fn main() { let until = std::time::Instant::now() + std::time::Duration::from_secs(3); println!(\"{}\", outer(until)); }\n",
    )
    .unwrap();
    let binary = dir.path().join("spin");
    // What `cargo build --release` passes: optimized, no frame pointers, no debug info.
    let status = Command::new("rustc")
        .args(["-C", "opt-level=3", "-C", "debuginfo=0", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    let (pid, recording) = record_command(&dir.path().join("rust.rec"), &mut Command::new(&binary), &[]);
    let paths = paths(&recording, pid);
    let total = samples(&paths, |_| true);
    let whole = samples(&paths, |p| p.contains("__libc_start_call_main;") && p.contains("spin::outer;spin::inner"));
    eprintln!("rust: {whole} of {total} samples whole");
    assert!(whole * 100 >= total * 90, "{whole} of {total}");
}

#[test]
fn a_binary_in_another_mount_namespace_has_whole_stacks() {
    let dir = temp_dir();
    let binary = chains_binary(dir.path(), &[]);
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let script = format!(
        "mount -t tmpfs none {p} && cp {b} {p}/chains && exec {p}/chains chains 3",
        p = private.display(),
        b = binary.display()
    );
    let (pid, recording) = record_command(
        &dir.path().join("ns.rec"),
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        &[],
    );
    assert!(!private.join("chains").exists(), "the binary is invisible from here");
    let paths = paths(&recording, pid);
    let total = samples(&paths, |_| true);
    let whole = samples(&paths, |p| p.contains("__libc_start_call_main;main;outer_"));
    eprintln!("other mount namespace: {whole} of {total} samples whole");
    assert!(whole * 100 >= total * 90, "{whole} of {total}");
}

/// The chains workload built with debug info, then stripped as distributions ship it: the binary
/// and its debug file (`objcopy --only-keep-debug`), and the debug file's build-id path.
fn stripped_with_debug_file(dir: &Path) -> (PathBuf, PathBuf, String) {
    let binary = chains_binary(dir, &["-g"]);
    let debug = dir.join("chains.debug");
    let run = |program: &str, args: &[&std::ffi::OsStr]| {
        assert!(Command::new(program).args(args).status().unwrap().success(), "{program}");
    };
    run("objcopy", &["--only-keep-debug".as_ref(), binary.as_os_str(), debug.as_os_str()]);
    run("strip", &["--strip-all".as_ref(), binary.as_os_str()]);
    let notes = String::from_utf8(Command::new("readelf").arg("-n").arg(&binary).output().unwrap().stdout).unwrap();
    let build_id = notes.split("Build ID: ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    (binary, debug, build_id)
}

fn names(recording: &Recording) -> Vec<String> {
    recording.stacks.as_ref().unwrap().frames.iter().map(|f| f.function.clone()).collect()
}

#[test]
fn stripped_binaries_are_named_from_the_build_id_directory() {
    let dir = temp_dir();
    let (binary, debug, build_id) = stripped_with_debug_file(dir.path());
    let debug_dir = dir.path().join("debug");
    let target = debug_dir.join(".build-id").join(&build_id[..2]).join(format!("{}.debug", &build_id[2..]));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &target).unwrap();

    let (_, unnamed) = record_command(&dir.path().join("plain.rec"), Command::new(&binary).args(["chains", "2"]), &[]);
    assert!(!names(&unnamed).iter().any(|n| n == "leaf_a"), "stripped: no name without the debug file");
    let debug_dir_arg = debug_dir.to_str().unwrap();
    let (_, named) = record_command(
        &dir.path().join("named.rec"),
        Command::new(&binary).args(["chains", "2"]),
        &["--debug-dir", debug_dir_arg],
    );
    let names = names(&named);
    assert!(names.iter().any(|n| n == "leaf_a") && names.iter().any(|n| n == "outer_b"), "{names:?}");
}

/// Debian's debuginfod, serving the debug files under a directory on a local port.
struct Debuginfod(Child);

impl Debuginfod {
    fn start(files: &Path, database: &Path, port: u16) -> Debuginfod {
        let child = Command::new("debuginfod")
            .args(["-F", files.to_str().unwrap(), "-p", &port.to_string(), "-d", database.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("debuginfod (Debian's package debuginfod; `cargo xtask setup` installs it)");
        Debuginfod(child)
    }
}

impl Drop for Debuginfod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stripped_binaries_are_named_by_a_debuginfod_server_and_a_dead_one_costs_nothing() {
    let dir = temp_dir();
    let (binary, debug, build_id) = stripped_with_debug_file(dir.path());
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::rename(&debug, served.join("chains.debug")).unwrap();
    let port = common::free_port();
    let _server = Debuginfod::start(&served, &dir.path().join("debuginfod.sqlite"), port);
    let url = format!("http://127.0.0.1:{port}");
    // The server scans its directory at start: wait until it serves the file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && common::http_get(&format!("127.0.0.1:{port}"), &format!("/buildid/{build_id}/debuginfo"), None).0 == 200
    };
    while !served() {
        assert!(Instant::now() < deadline, "debuginfod did not index the debug file");
        std::thread::sleep(Duration::from_millis(500));
    }
    let cache = dir.path().join("cache");
    let rec = dir.path().join("named.rec");
    let (status, seconds) = record_system_wide(
        &rec,
        &binary,
        &[("DEBUGINFOD_URLS", &url), ("DEBUGINFOD_CACHE_PATH", cache.to_str().unwrap())],
    );
    assert!(status, "record failed");
    let recording = profiler::recording::read_file(&rec).unwrap();
    assert!(names(&recording).iter().any(|n| n == "leaf_a"), "named from debuginfod");
    assert!(cache.join(&build_id).join("debuginfo").is_file(), "cached as elfutils caches");

    // A server that is down: the recording completes as promptly, frames keep module+offset.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let rec = dir.path().join("dead.rec");
    let empty_cache = dir.path().join("empty-cache");
    let (status, dead_seconds) = record_system_wide(
        &rec,
        &binary,
        &[("DEBUGINFOD_URLS", &dead), ("DEBUGINFOD_CACHE_PATH", empty_cache.to_str().unwrap())],
    );
    assert!(status, "record failed");
    assert!(dead_seconds < seconds + 5.0, "{dead_seconds:.1} s with a dead server, {seconds:.1} s with a live one");
    let names = names(&profiler::recording::read_file(&rec).unwrap());
    assert!(!names.iter().any(|n| n == "leaf_a") && names.iter().any(|n| n.starts_with("chains+0x")), "{names:?}");
}

/// `profiler record -d 3` with `env`, while the workload runs; whether it succeeded and how long
/// the profiler took from start to exit.
fn record_system_wide(rec: &Path, binary: &Path, env: &[(&str, &str)]) -> (bool, f64) {
    let mut workload = Command::new(binary).args(["chains", "4"]).stdout(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let status = Command::new(common::profiler_bin())
        .args(["record", "-d", "3", "-q", "--probes", "cpu", "-p", &workload.id().to_string(), "-o"])
        .arg(rec)
        .envs(env.iter().copied())
        .status()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let _ = workload.kill();
    let _ = workload.wait();
    (status.success(), seconds)
}
