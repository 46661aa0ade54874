//! `profiler top` in a real terminal (Debian's tmux) and as plain text, beside workloads whose
//! truth is known: the 70/30 workload (`hot_seventy` has 70 % of its CPU time, `hot_thirty` 30 %)
//! and sleepers of known period.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{Workload, profiler_bin, programs_left_after_exit, temp_dir};

/// One profiler at a time: each test checks that none of its programs is left.
static SERIAL: Mutex<()> = Mutex::new(());

/// A tmux server of the test's own (its own socket), killed at the end.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn start(dir: &Path, width: u16, height: u16, script: &str) -> Tmux {
        let tmux = Tmux { socket: dir.join("tmux.sock") };
        let (width, height) = (width.to_string(), height.to_string());
        tmux.run(&["new-session", "-d", "-x", &width, "-y", &height, "sh", "-c", script]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("run tmux (Debian's)");
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn capture(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    fn keys(&self, keys: &[&str]) {
        let args: Vec<&str> = ["send-keys"].into_iter().chain(keys.iter().copied()).collect();
        self.run(&args);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
    }
}

/// Captures the pane until `done` holds of it, for at most `limit`; returns the last capture and
/// how long it took.
fn capture_until(tmux: &Tmux, limit: Duration, done: impl Fn(&str) -> bool) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let screen = tmux.capture();
        if done(&screen) || start.elapsed() > limit {
            return (screen, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids in the rows of the processes table (below its `PID COMMAND` header).
fn process_table_pids(screen: &str) -> Vec<u32> {
    screen
        .lines()
        .skip_while(|line| !(line.contains("PID") && line.contains("COMMAND")))
        .skip(1)
        .map_while(|line| line.strip_prefix('│'))
        .filter_map(|row| row.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn top_runs_in_a_real_terminal_and_leaves_it_as_it_was() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(programs_left_after_exit(), 0, "a profiler is already running");
    let mut workload = Workload::spawn(&["hot", "--seconds", "60"]);
    let pid = workload.pid();
    workload.go();
    let dir = temp_dir();
    let tmux = start_top(dir.path());

    let pid_text = pid.to_string();
    let (screen, took) = capture_until(&tmux, Duration::from_secs(10), |screen| {
        screen.contains("hot_seventy")
            && screen.lines().any(|line| line.contains(&pid_text) && line.contains("workload"))
    });
    assert!(
        screen.contains("hot_seventy") && took <= Duration::from_secs(5),
        "the hot function and the workload were not on the screen within 5 s ({took:?}):\n{screen}"
    );
    assert!(screen.contains("[.]"), "user frames are marked as perf top marks them:\n{screen}");
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(tmux.capture(), screen, "the screen did not change in 2 s");

    // Enter on the workload (first by CPU) makes the kernel record it alone.
    tmux.keys(&["Down", "Enter"]);
    let focused = format!("only {pid} workload");
    let (screen, _) = capture_until(&tmux, Duration::from_secs(5), |screen| {
        let pids = process_table_pids(screen);
        screen.contains(&focused) && !pids.is_empty() && pids.iter().all(|&p| p == pid)
    });
    let pids = process_table_pids(&screen);
    assert!(
        screen.contains(&focused) && !pids.is_empty() && pids.iter().all(|&p| p == pid),
        "after Enter, only the workload ({pid}) is recorded: {pids:?}\n{screen}"
    );
    tmux.keys(&["Escape"]);
    let (screen, _) = capture_until(&tmux, Duration::from_secs(5), |screen| process_table_pids(screen).len() > 1);
    assert!(process_table_pids(&screen).len() > 1, "after Esc, every process is recorded again:\n{screen}");

    tmux.keys(&["q"]);
    top_ended_cleanly(dir.path(), &tmux, "q");
}

/// SIGTERM (a service manager, `kill`) ends `top` as q does: status 0, the terminal given back,
/// nothing left attached.
#[test]
fn sigterm_gives_the_terminal_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(programs_left_after_exit(), 0, "a profiler is already running");
    let dir = temp_dir();
    let tmux = start_top(dir.path());
    let (screen, _) = capture_until(&tmux, Duration::from_secs(10), |screen| screen.contains("profiler top ·"));
    assert!(screen.contains("profiler top ·"), "top did not start:\n{screen}");
    let shell = tmux.run(&["display-message", "-p", "#{pane_pid}"]);
    let children = Command::new("pgrep").args(["-P", shell.trim()]).output().expect("pgrep");
    let top: i32 = String::from_utf8_lossy(&children.stdout).trim().parse().expect("top's pid");
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(top, libc::SIGTERM) }, 0);
    top_ended_cleanly(dir.path(), &tmux, "SIGTERM");
}

/// Starts `profiler top` in a 160×45 tmux pane, in a shell that then writes the terminal's
/// settings before and after, and last its exit status, to files in `dir`.
fn start_top(dir: &Path) -> Tmux {
    let file = |name: &str| dir.join(name).display().to_string();
    let script = format!(
        "stty -g > {before}; {profiler} top; echo $? > {status}.tmp; stty -g > {after}; stty -a > {after_all}; mv {status}.tmp {status}; exec sleep 60",
        profiler = profiler_bin().display(),
        before = file("stty-before"),
        status = file("status"),
        after = file("stty-after"),
        after_all = file("stty-after-all"),
    );
    Tmux::start(dir, 160, 45, &script)
}

/// Checks that the `top` of `start_top` exits with 0 within 3 s of being asked (by `how`), leaves
/// no program loaded and gives back the terminal in cooked mode, as it found it.
fn top_ended_cleanly(dir: &Path, tmux: &Tmux, how: &str) {
    let status_path = dir.join("status");
    let asked = Instant::now();
    while !status_path.exists() && asked.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = asked.elapsed();
    let status = std::fs::read_to_string(&status_path).unwrap_or_default();
    assert_eq!(status.trim(), "0", "top's exit status after {how}:\n{}", tmux.capture());
    assert!(took <= Duration::from_secs(3), "{how} took {took:?} to end top");
    assert_eq!(programs_left_after_exit(), 0, "programs left after {how}");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert_eq!(read("stty-before"), read("stty-after"), "the terminal's settings changed after {how}");
    let settings = read("stty-after-all");
    assert!(
        settings.split_whitespace().any(|s| s == "icanon") && settings.split_whitespace().any(|s| s == "echo"),
        "the terminal is not back in cooked mode after {how}:\n{settings}"
    );
}

/// Parses a plain-text line: its kind and its `key=value` fields.
fn fields(line: &str) -> (&str, HashMap<&str, &str>) {
    let mut parts = line.split('\t');
    let kind = parts.next().unwrap_or("");
    (kind, parts.filter_map(|field| field.split_once('=')).collect())
}

#[test]
fn plain_snapshots_when_the_output_is_not_a_terminal() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut workload = Workload::spawn(&["hot", "--seconds", "30"]);
    let pid = workload.pid().to_string();
    workload.go();
    let output = Command::new(profiler_bin()).args(["top", "-n", "3", "-i", "1s"]).output().expect("run profiler top");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(programs_left_after_exit(), 0, "programs left after -n");

    let lines: Vec<(&str, HashMap<&str, &str>)> = stdout.lines().filter(|l| !l.is_empty()).map(fields).collect();
    let snapshots: Vec<&HashMap<&str, &str>> = lines.iter().filter(|(k, _)| *k == "snapshot").map(|(_, f)| f).collect();
    assert_eq!(snapshots.len(), 3, "one snapshot per interval, as many as -n asks:\n{stdout}");
    // Intervals are never shorter than -i asks; a late drain (a busy machine, an emulated guest)
    // makes one longer, and the snapshot says so: the intervals add up to the time elapsed.
    let intervals: Vec<f64> = snapshots.iter().map(|s| s["interval_s"].parse().unwrap()).collect();
    assert!(intervals.iter().all(|&i| i >= 0.9), "intervals of {intervals:?} s for -i 1s:\n{stdout}");
    let elapsed: f64 = snapshots[2]["elapsed_s"].parse().unwrap();
    assert!((intervals.iter().sum::<f64>() - elapsed).abs() < 0.01, "{intervals:?} do not add up to {elapsed} s");
    assert!(snapshots.iter().all(|s| s["probes"] == "sched,syscalls,cpu"), "{stdout}");
    assert!(lines.iter().all(|(kind, _)| ["snapshot", "function", "process"].contains(kind)), "{stdout}");

    // 70/30 between the two functions, whatever else the machine runs (named `workload::hot_...`).
    let share = |name: &str| -> f64 {
        let of = |(kind, f): &&(&str, HashMap<&str, &str>)| {
            *kind == "function" && f["name"].ends_with(name) && f["kind"] == "user"
        };
        lines.iter().filter(of).map(|(_, f)| f["self_percent"].parse::<f64>().unwrap()).sum()
    };
    let (seventy, thirty) = (share("hot_seventy"), share("hot_thirty"));
    assert!(thirty > 0.0 && (1.5..4.0).contains(&(seventy / thirty)), "hot_seventy {seventy} %, hot_thirty {thirty} %");

    let rows: Vec<&HashMap<&str, &str>> =
        lines.iter().filter(|(kind, f)| *kind == "process" && f["pid"] == pid).map(|(_, f)| f).collect();
    assert_eq!(rows.len(), 3, "the workload in every snapshot:\n{stdout}");
    // Over the whole run: each interval's share weighed by its length.
    let cpu = rows.iter().zip(&intervals).map(|(row, i)| row["cpu_percent"].parse::<f64>().unwrap() * i).sum::<f64>()
        / intervals.iter().sum::<f64>();
    assert!(rows.iter().all(|row| row["comm"] == "workload"));
    assert!((70.0..=130.0).contains(&cpu), "one busy thread is about 100 % of a CPU, not {cpu} %");
    assert!(
        !lines.iter().any(|(kind, f)| *kind == "process" && f["comm"] == "profiler"),
        "the profiler's own process is left out:\n{stdout}"
    );
}

/// A duration as `top` prints it (`format_ns`: 950ns, 12.5µs, 2.16ms, 1.20s), in nanoseconds.
fn parse_ns(text: &str) -> f64 {
    let units = [("ns", 1.0), ("µs", 1e3), ("ms", 1e6), ("s", 1e9)];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|number| (number, scale)))
        .unwrap_or_else(|| panic!("not a duration: {text:?}"));
    number.parse::<f64>().unwrap_or_else(|_| panic!("not a duration: {text:?}")) * scale
}

/// Each process's slowest syscall by its p99 over the interval, from histograms the kernel keeps
/// per process: two sleepers of known period (1 ms and 3 ms), ranked by `--sort syscalls`, each
/// with its sleep's p99 (its period and a little more) in every snapshot.
#[test]
fn processes_show_their_slowest_syscall_by_p99() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut short = Workload::spawn(&["sleep", "--cpu", "0", "--count", "4000", "--interval-us", "1000"]);
    let mut long = Workload::spawn(&["sleep", "--cpu", "1", "--count", "1500", "--interval-us", "3000"]);
    let (short_pid, long_pid) = (short.pid().to_string(), long.pid().to_string());
    short.go();
    long.go();
    let output = Command::new(profiler_bin())
        .args(["top", "-n", "3", "-i", "1s", "--sort", "syscalls", "-p", &short_pid, "-p", &long_pid])
        .output()
        .expect("run profiler top");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(programs_left_after_exit(), 0, "programs left after -n");

    let lines: Vec<(&str, HashMap<&str, &str>)> = stdout.lines().filter(|l| !l.is_empty()).map(fields).collect();
    let snapshots: Vec<Vec<&HashMap<&str, &str>>> = lines
        .split(|(kind, _)| *kind == "snapshot")
        .skip(1)
        .map(|rows| rows.iter().filter(|(kind, _)| *kind == "process").map(|(_, f)| f).collect())
        .collect();
    assert_eq!(snapshots.len(), 3, "{stdout}");
    for rows in snapshots {
        let pids: Vec<&str> = rows.iter().map(|row| row["pid"]).collect();
        assert_eq!(pids, [long_pid.as_str(), short_pid.as_str()], "the slower sleeper first:\n{stdout}");
        for (row, period_ms) in rows.iter().zip([3.0, 1.0]) {
            let (name, p99) = row["slowest_syscall_p99"].split_once(':').expect("a slowest syscall");
            let p99_ms = parse_ns(p99) / 1e6;
            assert_eq!(name, "clock_nanosleep", "{stdout}");
            assert!(
                (period_ms * 0.95..period_ms + 3.0).contains(&p99_ms),
                "sleeps of {period_ms} ms have a p99 of {p99_ms} ms:\n{stdout}"
            );
        }
    }
}
