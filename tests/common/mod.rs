//! Helpers shared by the integration tests: run the real profiler binary against workloads whose
//! truth is known. The tests need root (they load eBPF programs), as in CI.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use profiler::recording::{self, Recording};

pub fn profiler_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_profiler"))
}

/// The `workload` binary, built next to the profiler (`cargo xtask test` builds it first).
pub fn workload_bin() -> PathBuf {
    let path = profiler_bin().with_file_name("workload");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p workload` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// The row of process `tgid`'s calls of syscall `name` (zeros if it made none).
pub fn syscall_row(recording: &Recording, tgid: u32, name: &str) -> recording::ProcessSyscall {
    let nr = name.parse::<syscalls::Sysno>().unwrap().id() as u32;
    let rows = &recording.syscalls.as_ref().expect("syscall data").per_process;
    rows.iter().find(|r| r.tgid == tgid && r.nr == nr).cloned().unwrap_or_default()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A running `profiler record`, started and ready (its probes attached).
pub struct Recorder {
    child: KillOnDrop,
    pub output: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
}

impl Recorder {
    /// Starts `profiler record -o OUTPUT ARGS...` and waits until it reports that it is recording.
    pub fn start(output: &Path, args: &[&str]) -> Recorder {
        let mut child = Command::new(profiler_bin())
            .arg("record")
            .arg("-o")
            .arg(output)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn profiler");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("recording ") => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let output = child.wait_with_output().unwrap();
                    panic!("profiler did not start: {}{}", String::from_utf8_lossy(&output.stdout), said.join("\n"));
                }
            }
        }
        Recorder { child: KillOnDrop(Some(child)), output: output.to_path_buf(), stderr_lines: rx }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` and waits for the profiler to finish; returns its status and stdout.
    pub fn stop_with(self, signal: i32) -> (ExitStatus, String, String) {
        // SAFETY: kill has no memory effects; the child is ours and not reaped yet.
        unsafe { libc::kill(self.pid(), signal) };
        self.wait()
    }

    pub fn wait(mut self) -> (ExitStatus, String, String) {
        let output = self.child.take().wait_with_output().expect("wait for profiler");
        let stderr: Vec<String> = self.stderr_lines.try_iter().collect();
        (output.status, String::from_utf8_lossy(&output.stdout).into_owned(), stderr.join("\n"))
    }

    /// Stops with SIGINT (Ctrl-C), checks that it succeeded, and reads the recording.
    pub fn finish(self) -> Recording {
        let output = self.output.clone();
        let (status, stdout, stderr) = self.stop_with(libc::SIGINT);
        assert!(status.success(), "profiler failed: {status}\n{stdout}\n{stderr}");
        recording::read_file(&output).expect("valid recording")
    }
}

/// A workload child that waits for `go()` before doing its work.
pub struct Workload {
    child: KillOnDrop,
    stdin: Option<ChildStdin>,
}

impl Workload {
    pub fn spawn(args: &[&str]) -> Workload {
        Workload::spawn_binary(&workload_bin(), args)
    }

    /// Runs a copy of the workload binary at `binary`.
    pub fn spawn_binary(binary: &Path, args: &[&str]) -> Workload {
        let mut child = Command::new(binary).args(args).stdin(Stdio::piped()).spawn().expect("spawn workload");
        let stdin = child.stdin.take();
        Workload { child: KillOnDrop(Some(child)), stdin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go() once");
        stdin.write_all(b"go\n").unwrap();
    }

    pub fn wait(mut self) {
        let status = self.child.take().wait().unwrap();
        assert!(status.success(), "workload failed: {status}");
    }
}

/// Records one run of the workload `workload_args` into `path`, filtered to its process, with the
/// extra `record` arguments; returns the workload's pid and the recording.
pub fn record_workload(path: &Path, workload_args: &[&str], record_args: &[&str]) -> (u32, Recording) {
    let mut workload = Workload::spawn(workload_args);
    let pid = workload.pid();
    let pid_text = pid.to_string();
    let args: Vec<&str> = ["-p", pid_text.as_str()].into_iter().chain(record_args.iter().copied()).collect();
    let recorder = Recorder::start(path, &args);
    workload.go();
    workload.wait();
    (pid, recorder.finish())
}

/// How many of the profiler's programs the kernel holds (of any process).
pub fn our_programs_loaded() -> usize {
    let ours = profiler::probes::program_names(&profiler::probes::Probe::all());
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        // The kernel keeps the first 15 bytes of a program's name.
        .filter(|p| p.name_as_str().is_some_and(|name| ours.iter().any(|ours| &ours[..ours.len().min(15)] == name)))
        .count()
}

/// Waits (up to 5 s: the kernel frees programs asynchronously, after RCU) until none of the
/// profiler's programs is loaded; returns how many still are.
pub fn programs_left_after_exit() -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while our_programs_loaded() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    our_programs_loaded()
}

/// Runs the profiler with `args` to completion.
pub fn run_profiler(args: &[&str]) -> Output {
    Command::new(profiler_bin()).args(args).output().expect("run profiler")
}

/// A child process that is killed if the test fails before waiting for it, so that a failed test
/// leaves no profiler attached and no workload spinning.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }

    fn take(&mut self) -> Child {
        self.0.take().expect("child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cgroup v2 directory made for one test, removed when dropped.
/// A cgroup v2 of the test's own, removed when dropped: a leaf below a top directory named after the
/// test process.
pub struct TestCgroup {
    leaf: PathBuf,
    /// What was created, top first.
    created: Vec<PathBuf>,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        TestCgroup::nested("")
    }

    /// A cgroup at `layout` (a relative path, as a container runtime or the kubelet lays its
    /// cgroups out) below the test's own top directory.
    pub fn nested(layout: &str) -> TestCgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields[2] == "cgroup2").then(|| fields[1].to_string())
            })
            .expect("a cgroup v2 mount");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut leaf = Path::new(&root).join(format!("profiler-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&leaf).unwrap();
        let mut created = vec![leaf.clone()];
        for component in layout.split('/').filter(|c| !c.is_empty()) {
            leaf.push(component);
            std::fs::create_dir(&leaf).unwrap();
            created.push(leaf.clone());
        }
        TestCgroup { leaf, created }
    }

    /// A cgroup beside this one (another container of the same pod), removed when dropped.
    pub fn sibling(&self, name: &str) -> TestCgroup {
        let leaf = self.leaf.with_file_name(name);
        std::fs::create_dir(&leaf).unwrap();
        TestCgroup { leaf: leaf.clone(), created: vec![leaf] }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    pub fn path(&self) -> &str {
        self.leaf.to_str().unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Exports `rec` as pprof into `dir` and reads it with `go tool pprof FLAG` (Debian's golang-go):
/// what pprof printed.
pub fn go_tool_pprof(rec: &Path, dir: &Path, flag: &str) -> String {
    let pb = dir.join("export.pb.gz");
    let result = run_profiler(&["export", "pprof", rec.to_str().unwrap(), "-o", pb.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    go_tool_pprof_source(pb.to_str().unwrap(), dir, flag)
}

/// `go tool pprof FLAG SOURCE` (a file or a URL, which pprof fetches itself) with `dir` as its
/// home: what pprof printed.
pub fn go_tool_pprof_source(source: &str, dir: &Path, flag: &str) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof", flag, source])
        .env("HOME", dir)
        .output()
        .expect("go (Debian's golang-go; `cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

/// A minimal HTTP/1.1 GET against a server on this machine: (status, body).
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    // Chunked bodies: join the chunks.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut joined = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || tail.len() < size {
                break;
            }
            joined.push_str(&tail[..size]);
            rest = tail[size..].trim_start_matches("\r\n");
        }
        return (status, joined);
    }
    (status, body.to_string())
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `profiler serve`, stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(profiler_bin())
            .args(["serve", "--listen", &addr, "--interval", "1s"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Warnings may come first (kernel addresses hidden, a probe left out).
        let mut said = String::new();
        loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "serve ended: {said}");
            said += &line;
            if line.contains("serving metrics") {
                break;
            }
        }
        // Keep reading: a closed pipe would fail the server's later messages.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        // The first drain fills the page.
        std::thread::sleep(Duration::from_millis(1500));
        Server { child, addr }
    }

    pub fn stop(self) -> ExitStatus {
        self.stop_within(Duration::from_secs(60)).0
    }

    /// Sends SIGTERM and waits at most `limit` for the exit; returns the status and how long the
    /// exit took. Past the limit, the server is killed and the test fails.
    pub fn stop_within(mut self, limit: Duration) -> (ExitStatus, Duration) {
        let sent = std::time::Instant::now();
        // SAFETY: kill has no memory effects; the child is ours and not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            assert!(sent.elapsed() < limit, "serve still running {limit:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` passes the exposition.
pub fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
