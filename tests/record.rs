//! End-to-end tests of `profiler record`: real eBPF programs against workloads whose truth is known.

mod common;

use std::path::Path;

use common::{Recorder, Workload, syscall_row, temp_dir};
use profiler::{analysis::histogram::percentiles, recording::Recording};

const ENOENT: u32 = 2;

/// Records a child that makes `getppid` getppid calls and `failed_opens` opens of a missing file,
/// with the pid filter on it and `args`; returns its pid and the recording.
fn record_known_calls(path: &Path, getppid: u64, failed_opens: u64, args: &[&str]) -> (u32, Recording) {
    let mut workload =
        Workload::spawn(&["syscalls", "--getppid", &getppid.to_string(), "--fail-open", &failed_opens.to_string()]);
    let pid = workload.pid();
    let pid_arg = pid.to_string();
    let recorder = Recorder::start(path, &[&["-p", pid_arg.as_str()][..], args].concat());
    workload.go();
    workload.wait();
    (pid, recorder.finish())
}

#[test]
fn counts_exactly_the_syscalls_a_process_makes() {
    const GETPPID: u64 = 5_000;
    const FAILED_OPENS: u64 = 37;
    let dir = temp_dir();
    let path = dir.path().join("syscalls.rec");
    let (pid, recording) = record_known_calls(&path, GETPPID, FAILED_OPENS, &["--probes", "syscalls"]);

    let getppid = syscall_row(&recording, pid, "getppid");
    assert_eq!(getppid.count, GETPPID);
    assert_eq!(getppid.errors, 0);
    assert!(getppid.total_ns > 0);

    let openat = syscall_row(&recording, pid, "openat");
    assert!(openat.count >= FAILED_OPENS);
    assert_eq!(openat.errors, FAILED_OPENS);
    assert_eq!(openat.errnos, vec![(ENOENT, FAILED_OPENS)]);

    // The pid filter runs in the kernel: nothing from other processes.
    let syscalls = recording.syscalls.as_ref().unwrap();
    assert!(syscalls.per_process.iter().all(|r| r.tgid == pid));
    assert_eq!(recording.processes[&pid].comm, "workload");
    let getppid_nr = syscalls::Sysno::getppid.id() as u32;
    assert_eq!(syscalls.latency[&getppid_nr].count(), GETPPID);
    assert!(recording.runq.is_none());
}

/// The count-only probe: the same exact counts and errnos, from sys_exit alone, and no latency,
/// which every output leaves out (not shows as zero) and says why.
#[test]
fn syscall_counts_counts_exactly_and_reports_no_latency() {
    const GETPPID: u64 = 5_000;
    const FAILED_OPENS: u64 = 37;
    let dir = temp_dir();
    let path = dir.path().join("counts.rec");
    let (pid, recording) = record_known_calls(&path, GETPPID, FAILED_OPENS, &["--probes", "syscall-counts"]);

    let getppid = syscall_row(&recording, pid, "getppid");
    assert_eq!((getppid.count, getppid.errors, getppid.total_ns), (GETPPID, 0, 0));
    let openat = syscall_row(&recording, pid, "openat");
    assert!(openat.count >= FAILED_OPENS);
    assert_eq!(openat.errors, FAILED_OPENS);
    assert_eq!(openat.errnos, vec![(ENOENT, FAILED_OPENS)]);
    let syscalls = recording.syscalls.as_ref().unwrap();
    assert!(syscalls.counts_only);
    assert!(syscalls.latency.is_empty());
    assert!(syscalls.per_process.iter().all(|r| r.tgid == pid));
    assert_eq!(recording.processes[&pid].comm, "workload");
    let calls: u64 = syscalls.per_process.iter().map(|r| r.count).sum();
    assert_eq!(recording.counters.syscalls, calls, "the total is the rows' sum");
    assert_eq!(recording.meta.options.probes, ["syscall-counts"]);

    let report = common::run_profiler(&["report", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{text}");
    let section = &text[text.find("Syscalls:").expect("a syscall section")..];
    assert!(section.contains("counted, not timed"), "{section}");
    assert!(!section.contains("p99") && !section.contains("by total time"), "{section}");
    let getppid_line = section.lines().find(|l| l.trim_start().starts_with("getppid")).unwrap();
    assert_eq!(getppid_line.split_whitespace().collect::<Vec<_>>(), ["getppid", &GETPPID.to_string(), "0"]);

    let json = common::run_profiler(&["report", "--json", path.to_str().unwrap()]);
    let summary: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let by_count = summary["syscalls"]["by_count"].as_array().unwrap();
    let row = by_count.iter().find(|r| r["name"] == "getppid").unwrap();
    assert_eq!(row["count"], GETPPID);
    assert!(row.get("latency").is_none() && row.get("total_ns").is_none(), "{row}");
    assert!(summary["syscalls"]["latency_not_measured"].is_string());
}

/// One call in 8 timed, drawn at random: counts and errnos stay exact; each timed call counts 8
/// times in its syscall's histogram and its row's total, which so estimate every call's; the
/// report says the latency is sampled.
#[test]
fn sampled_latency_counts_every_call_and_weighs_the_timed_ones() {
    const GETPPID: u64 = 40_000;
    const FAILED_OPENS: u64 = 37;
    const ONE_IN: u64 = 8;
    let dir = temp_dir();
    let path = dir.path().join("sampled.rec");
    let args = ["--probes", "syscalls", "--syscall-latency-sample", &ONE_IN.to_string()];
    let (pid, recording) = record_known_calls(&path, GETPPID, FAILED_OPENS, &args);
    assert_eq!(recording.meta.options.syscall_sample_one_in, ONE_IN as u32);

    let getppid = syscall_row(&recording, pid, "getppid");
    assert_eq!((getppid.count, getppid.errors), (GETPPID, 0));
    let openat = syscall_row(&recording, pid, "openat");
    assert_eq!(openat.errors, FAILED_OPENS);
    assert_eq!(openat.errnos, vec![(ENOENT, FAILED_OPENS)]);

    let nr = syscalls::Sysno::getppid.id() as u32;
    let histogram = &recording.syscalls.as_ref().unwrap().latency[&nr];
    assert_eq!(histogram.count() % ONE_IN, 0, "each timed call counts {ONE_IN} times");
    // The calls timed are Binomial(40000, 1/8): 5000, with a standard deviation of 66.
    let timed = histogram.count() / ONE_IN;
    assert!((4_600..=5_400).contains(&timed), "{timed} of {GETPPID} calls timed");
    // The row's total is weighed as the histogram is: both give the timed calls' mean (the
    // histogram to its buckets' width, 6 %; the total divided by the exact count, to the draw's 1 %).
    let mean_by_total = getppid.total_ns as f64 / GETPPID as f64;
    let mean_by_histogram = percentiles(histogram).mean_ns;
    assert!(
        (mean_by_total / mean_by_histogram - 1.0).abs() < 0.1,
        "mean {mean_by_total:.0} ns by the total, {mean_by_histogram:.0} ns by the histogram"
    );

    let report = common::run_profiler(&["report", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{text}");
    assert!(text.contains("latency of 1 call in 8, drawn at random"), "{text}");
}

/// Beside strace on the same run: a process that starts threads (clone3) which make known calls and
/// fail known opens. Both syscall probes count every syscall strace counts after it attached, as
/// strace counts them (a new thread's return from clone3 is not a call of its own).
#[test]
fn syscall_counts_match_strace_on_the_same_run() {
    let dir = temp_dir();
    for probe in ["syscalls", "syscall-counts"] {
        let mut workload = Workload::spawn(&["syscalls", "--getppid", "2000", "--fail-open", "7", "--threads", "3"]);
        let pid = workload.pid();
        let recorder =
            Recorder::start(&dir.path().join(format!("{probe}.rec")), &["-p", &pid.to_string(), "--probes", probe]);
        let strace_out = dir.path().join(format!("{probe}.strace"));
        let mut strace = std::process::Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&strace_out)
            .args(["-p", &pid.to_string()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("strace (Debian's package; `cargo xtask setup` installs it)");
        // strace says when it has attached; the rest of what it says is read, not left to a
        // closed pipe.
        let mut stderr = std::io::BufReader::new(strace.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(line.contains("attached"), "{line}");
        let rest = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        workload.go();
        workload.wait();
        let status = strace.wait().unwrap();
        assert!(status.success(), "strace: {status}: {}", rest.join().unwrap());
        let recording = recorder.finish();

        // The read that waited for "go" began before either attached; exit_group never returns.
        let skipped = ["read", "exit_group", "restart_syscall"];
        let text = std::fs::read_to_string(&strace_out).unwrap();
        let mut compared = 0;
        for fields in text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()) {
            let (calls, errors, name) = match fields[..] {
                [_, _, _, calls, errors, name] => (calls, errors, name),
                [_, _, _, calls, name] => (calls, "0", name),
                _ => continue,
            };
            let (Ok(calls), Ok(errors)) = (calls.parse::<u64>(), errors.parse::<u64>()) else { continue };
            if name == "total" || skipped.contains(&name) {
                continue;
            }
            let row = syscall_row(&recording, pid, name);
            assert_eq!((row.count, row.errors), (calls, errors), "{probe}: {name}, strace:\n{text}");
            compared += 1;
        }
        assert!(compared >= 5, "{probe}: only {compared} syscalls compared:\n{text}");
        assert_eq!(syscall_row(&recording, pid, "getppid").count, 3 * 2000);
    }
}

/// Threads of one process on every CPU make the same syscall at once: each CPU counts its own
/// calls (no atomic instruction), and the drain's sum is exact, for both syscall probes.
#[test]
fn threads_on_every_cpu_are_counted_exactly() {
    const THREADS: u64 = 4;
    const GETPPID: u64 = 20_000;
    let dir = temp_dir();
    for probe in ["syscalls", "syscall-counts"] {
        let mut workload = Workload::spawn(&[
            "syscalls",
            "--getppid",
            &GETPPID.to_string(),
            "--fail-open",
            "3",
            "--threads",
            &THREADS.to_string(),
        ]);
        let pid = workload.pid();
        let path = dir.path().join(format!("{probe}.rec"));
        let recorder = Recorder::start(&path, &["-p", &pid.to_string(), "--probes", probe]);
        workload.go();
        workload.wait();
        let recording = recorder.finish();
        assert_eq!(syscall_row(&recording, pid, "getppid").count, THREADS * GETPPID, "{probe}");
        assert_eq!(syscall_row(&recording, pid, "openat").errors, THREADS * 3, "{probe}");
    }
}

/// Hundreds of processes one after the other: their (process, syscall) keys outnumber each CPU's
/// slots, so calls are counted both in the slots and in the hash map behind them, and the slots of
/// exited processes are freed at each drain and taken again. The processes' counts add up exactly
/// (the recording folds most of their rows into one per name), for both syscall probes.
#[test]
fn many_processes_are_counted_exactly_in_slots_and_table() {
    const PROCESSES: u64 = 300;
    const GETPPID: u64 = 700;
    const FAILED_OPENS: u64 = 4;
    let cgroup = common::TestCgroup::new();
    let dir = temp_dir();
    for probe in ["syscalls", "syscall-counts"] {
        let recorder =
            Recorder::start(&dir.path().join(format!("{probe}.rec")), &["--cgroup", cgroup.path(), "--probes", probe]);
        for _ in 0..PROCESSES {
            let mut workload = Workload::spawn(&[
                "syscalls",
                "--getppid",
                &GETPPID.to_string(),
                "--fail-open",
                &FAILED_OPENS.to_string(),
            ]);
            cgroup.add(workload.pid());
            workload.go();
            workload.wait();
        }
        let recording = recorder.finish();
        let rows = &recording.syscalls.as_ref().unwrap().per_process;
        let total = |name: &str| {
            let nr = name.parse::<syscalls::Sysno>().unwrap().id() as u32;
            rows.iter().filter(|r| r.nr == nr).fold((0, 0), |(count, errors), r| (count + r.count, errors + r.errors))
        };
        assert_eq!(total("getppid"), (PROCESSES * GETPPID, 0), "{probe}");
        // The dynamic loader's failed opens may come before the process is in the cgroup, or after.
        assert!(total("openat").1 >= PROCESSES * FAILED_OPENS, "{probe}");
        assert_eq!(recording.counters.drops.syscall_process, 0, "{probe}");
    }
}

/// `--syscall-latency-per-process`: a histogram per (process, syscall) beside the per-syscall one,
/// with every call in it, at the latency the workload asked for (2 ms sleeps take 2 ms and a
/// little more); the report ranks the pair by its p99. Without the option, none is kept.
#[test]
fn syscall_latency_per_process_holds_every_call_at_its_latency() {
    const SLEEPS: u64 = 400;
    let dir = temp_dir();
    let workload = ["sleep", "--cpu", "0", "--count", &SLEEPS.to_string(), "--interval-us", "2000"];
    let path = dir.path().join("per-process.rec");
    let (pid, recording) =
        common::record_workload(&path, &workload, &["--probes", "syscalls", "--syscall-latency-per-process"]);
    let sleeps = syscall_row(&recording, pid, "clock_nanosleep");
    assert_eq!(sleeps.count, SLEEPS);
    let latency = percentiles(sleeps.latency.as_ref().expect("a per-process histogram"));
    assert_eq!(latency.count, SLEEPS, "every call in the process's histogram");
    let nr = syscalls::Sysno::clock_nanosleep.id() as u32;
    assert_eq!(recording.syscalls.as_ref().unwrap().latency[&nr].count(), SLEEPS, "and in the syscall's");
    // A sleep is never shorter than asked (the bucket's midpoint may be 3 % below); how much longer
    // depends on the machine (an emulated guest wakes late), so the upper bound only rules out nonsense.
    assert!((1_940_000..10_000_000).contains(&latency.p50_ns), "2 ms sleeps, a p50 of {} ns", latency.p50_ns);
    assert!(latency.p99_ns >= latency.p50_ns);
    assert_eq!(recording.counters.drops.syscall_latency_process, 0);

    let output = common::run_profiler(&["report", path.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let slowest = &report["syscalls"]["slowest_by_process"][0];
    assert_eq!(
        (slowest["tgid"].as_u64(), slowest["syscall"].as_str()),
        (Some(u64::from(pid)), Some("clock_nanosleep"))
    );
    assert_eq!(slowest["latency"]["p99_ns"].as_u64(), Some(latency.p99_ns));

    let (pid, recording) = common::record_workload(&dir.path().join("plain.rec"), &workload, &["--probes", "syscalls"]);
    assert_eq!(syscall_row(&recording, pid, "clock_nanosleep").latency, None);
}

/// A shell's children make syscalls between fork and exec, under the shell's name, and then run
/// another program for a moment. Each is named after the program it ran, not after its parent,
/// though it has exited before the recorder could read its /proc.
#[test]
fn children_are_named_after_the_program_they_exec() {
    const CHILDREN: usize = 30;
    let cgroup = common::TestCgroup::new();
    let dir = temp_dir();
    let recorder =
        Recorder::start(&dir.path().join("exec.rec"), &["--cgroup", cgroup.path(), "--probes", "sched,syscalls"]);
    let script = format!(
        "echo $$ > {}/cgroup.procs && i=0 && while [ $i -lt {CHILDREN} ]; do /bin/true; i=$((i + 1)); done",
        cgroup.path()
    );
    let status = std::process::Command::new("/bin/sh").args(["-c", &script]).status().expect("run sh");
    assert!(status.success());
    let recording = recorder.finish();
    let named = |comm: &str| -> usize {
        recording.processes.iter().filter(|(_, p)| p.comm == comm).map(|(&tgid, _)| recording.process_count(tgid)).sum()
    };
    let names: Vec<(&u32, &str)> = recording.processes.iter().map(|(tgid, p)| (tgid, p.comm.as_str())).collect();
    assert_eq!((named("sh"), named("true")), (1, CHILDREN), "{names:?}");
}

#[test]
fn contended_cpu_shows_millisecond_run_queue_waits_and_idle_cpu_does_not() {
    let dir = temp_dir();
    let mut spinners = Workload::spawn(&["spin", "--threads", "4", "--cpu", "1", "--seconds", "2"]);
    let mut sleeper = Workload::spawn(&["sleep", "--cpu", "0", "--count", "300", "--interval-us", "1000"]);
    let recorder = Recorder::start(
        &dir.path().join("runq.rec"),
        &["-p", &spinners.pid().to_string(), "-p", &sleeper.pid().to_string(), "--probes", "sched"],
    );
    spinners.go();
    sleeper.go();
    let (spin_pid, sleep_pid) = (spinners.pid(), sleeper.pid());
    spinners.wait();
    sleeper.wait();
    let recording = recorder.finish();

    let runq = recording.runq.as_ref().expect("run-queue data");
    let spin = percentiles(&runq.per_process[&spin_pid]);
    let sleep = percentiles(&runq.per_process[&sleep_pid]);
    eprintln!("spinners: {spin:?}\nsleeper: {sleep:?}");
    assert!(spin.count >= 100, "spinners were preempted only {} times", spin.count);
    assert!(spin.p50_ns >= 1_000_000, "spinners' p50 {} ns is not in the milliseconds", spin.p50_ns);
    assert!(sleep.count >= 250, "sleeper woke only {} times", sleep.count);
    assert!(sleep.p50_ns * 10 <= spin.p50_ns, "sleeper p50 {} ns is not far below {} ns", sleep.p50_ns, spin.p50_ns);
    // The contended CPU's histogram holds the long waits.
    assert!(percentiles(&runq.per_cpu[1]).p50_ns >= 1_000_000);
    assert!(recording.counters.involuntary_switches >= spin.count / 2);
    assert_eq!(recording.tgids().into_iter().collect::<Vec<_>>(), {
        let mut pids = vec![spin_pid, sleep_pid];
        pids.sort();
        pids
    });
}

#[test]
fn sigint_and_sigterm_give_complete_recordings() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = temp_dir();
        let output = dir.path().join("signal.rec");
        let recorder = Recorder::start(&output, &[]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (status, stdout, stderr) = recorder.stop_with(signal);
        assert!(status.success(), "signal {signal}: {status} {stderr}");
        assert!(stdout.contains("Run-queue latency") && stdout.contains("Syscalls:"), "summary printed: {stdout}");
        let recording = profiler::recording::read_file(&output).expect("valid recording");
        assert!(recording.meta.duration_ns >= 400_000_000);
        assert!(recording.counters.sched_switches > 0 && recording.counters.syscalls > 0);
        assert!(recording.runq.as_ref().is_some_and(|r| r.system.count() > 0));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("signal.rec")], "no temporary files left");
    }
}

#[test]
fn duration_limit_ends_the_recording() {
    let dir = temp_dir();
    let output = dir.path().join("timed.rec");
    let result = common::run_profiler(&["record", "-d", "1", "-q", "-o", output.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert!(result.stdout.is_empty(), "--quiet prints nothing");
    let recording = profiler::recording::read_file(&output).unwrap();
    let seconds = recording.meta.duration_ns as f64 / 1e9;
    assert!((0.9..3.0).contains(&seconds), "recorded {seconds} s");
    assert_eq!(recording.meta.options.probes, ["sched", "syscalls", "cpu"]);
}

#[test]
fn cgroup_filter_keeps_only_the_cgroups_tasks() {
    let cgroup = common::TestCgroup::new();
    let dir = temp_dir();
    let mut inside = Workload::spawn(&["syscalls", "--getppid", "1000", "--fail-open", "0"]);
    let mut outside = Workload::spawn(&["syscalls", "--getppid", "1000", "--fail-open", "0"]);
    cgroup.add(inside.pid());
    let recorder = Recorder::start(&dir.path().join("cgroup.rec"), &["--cgroup", cgroup.path()]);
    inside.go();
    outside.go();
    let (inside_pid, outside_pid) = (inside.pid(), outside.pid());
    inside.wait();
    outside.wait();
    let recording = recorder.finish();
    assert_eq!(syscall_row(&recording, inside_pid, "getppid").count, 1000);
    assert_eq!(
        recording.tgids().into_iter().collect::<Vec<_>>(),
        vec![inside_pid],
        "outside pid {outside_pid} filtered"
    );
}

/// More (process, syscall) pairs than the kernel's per-process map holds: the recorder moves the
/// entries of exited processes out while recording, so none is dropped and every child is there
/// (the first of a name apart, the rest in their name's total).
#[test]
fn many_short_lived_processes_overflow_no_map() {
    const CHILDREN: usize = 1800;
    let capacity = profiler_common::syscalls::MAX_PROCESS_SYSCALLS as usize;
    let cgroup = common::TestCgroup::new();
    let dir = temp_dir();
    let mut workload = Workload::spawn(&["short-lived", "--children", &CHILDREN.to_string(), "--millis", "0"]);
    let workload_pid = workload.pid();
    cgroup.add(workload_pid);
    let recorder =
        Recorder::start(&dir.path().join("churn.rec"), &["--cgroup", cgroup.path(), "--probes", "sched,syscalls"]);
    workload.go();
    workload.wait();
    let recording = recorder.finish();

    let syscalls = recording.syscalls.as_ref().unwrap();
    let processes: usize = recording.tgids().iter().map(|&tgid| recording.process_count(tgid)).sum();
    assert!(processes > CHILDREN, "{processes} processes in the recording");
    let child =
        recording.tgids().into_iter().find(|&tgid| recording.process_count(tgid) == 1 && tgid != workload_pid).unwrap();
    let rows_per_child = syscalls.per_process.iter().filter(|row| row.tgid == child).count();
    assert!(CHILDREN * rows_per_child > capacity, "{CHILDREN} × {rows_per_child} rows: not enough to overflow the map");
    assert!(syscalls.per_process.len() < capacity / 4, "exited processes fold into their name's total");
    assert_eq!(recording.counters.drops.syscall_process, 0);
    assert_eq!(recording.counters.drops.runq_process, 0);
    // Every child execs once; a child whose pid an earlier one had shares its row.
    let execve = syscalls::Sysno::execve.id() as u32;
    let execs: u64 = syscalls.per_process.iter().filter(|row| row.nr == execve).map(|row| row.count).sum();
    assert_eq!(execs, CHILDREN as u64);
    assert!(recording.tgids().iter().all(|tgid| recording.processes[tgid].comm == "workload"));
}
