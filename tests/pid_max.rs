//! Per-thread start times at the kernel's and at systemd's kernel.pid_max. These tests set
//! pid_max and the next pid the kernel hands out (ns_last_pid), which would upset the pids of any
//! test running beside them: they have a test binary of their own, and run one at a time.

mod common;

use common::{Recorder, Workload, syscall_row, temp_dir};
use profiler_common::syscalls::SYSCALL_SLOT_TABLE_BITS;

/// Sets kernel.pid_max for the length of a test; one test at a time.
struct PidMax {
    old: String,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static PID_MAX_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PidMax {
    const PATH: &str = "/proc/sys/kernel/pid_max";

    fn set(value: u32) -> PidMax {
        let guard = PID_MAX_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, value.to_string()).unwrap();
        PidMax { old: old.trim().to_string(), _one_at_a_time: guard }
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.old);
    }
}

/// A workload whose process gets `pid` (the kernel hands out the id after ns_last_pid, unless
/// another fork takes it first: then again), or None once a live task holds `pid` (a kernel worker
/// forked in between keeps it: the kernel never hands it out while it lives).
fn spawn_with_pid(pid: u32, args: &[&str]) -> Option<Workload> {
    for _ in 0..20 {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let workload = Workload::spawn(args);
        if workload.pid() == pid {
            return Some(workload);
        }
    }
    None
}

/// A workload whose process gets the first pid of `pids` that no live task holds.
fn spawn_at_first_free_pid(pids: std::ops::Range<u32>, args: &[&str]) -> Workload {
    let tried = format!("{pids:?}");
    pids.into_iter()
        .find_map(|pid| spawn_with_pid(pid, args))
        .unwrap_or_else(|| panic!("no pid of {tried} could be had"))
}

fn loaded_map_ids() -> std::collections::BTreeSet<u32> {
    aya::maps::loaded_maps().filter_map(Result::ok).map(|map| map.id()).collect()
}

/// Capacities and value sizes of the maps called `name` loaded since `before` was taken (the
/// kernel keeps the first 15 bytes of a name).
fn new_maps(name: &str, before: &std::collections::BTreeSet<u32>) -> Vec<(u32, u32)> {
    let kernel_name = &name[..name.len().min(15)];
    aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|map| !before.contains(&map.id()) && map.name_as_str() == Some(kernel_name))
        .map(|map| (map.max_entries(), map.value_size()))
        .collect()
}

/// Start times live in tables indexed by thread id: run-queue ones in arrays sized to
/// kernel.pid_max up to 2^19 slots, syscall entries in a fixed table of 2^19 slots in the programs'
/// global data (with pid_max as large as systemd sets it, threads share slots by their ids' low
/// bits); either way the counts are exact and every call of a thread alone in its slot is timed.
/// The per-CPU counting slots are one table in global data too, whatever pid_max is.
#[test]
fn start_time_tables_follow_pid_max_up_to_half_a_million_slots() {
    const GETPPID: u64 = 3_000;
    let slots = profiler_common::process::MAX_THREAD_SLOTS;
    for (pid_max, array_len, first_pid) in [(32_768, 32_768, 30_000), (4_194_304, slots, 3 * slots + 777)] {
        let _pid_max = PidMax::set(pid_max);
        let dir = temp_dir();
        let getppid = GETPPID.to_string();
        let mut workload = spawn_at_first_free_pid(
            first_pid..first_pid + 100,
            &["syscalls", "--getppid", &getppid, "--fail-open", "0"],
        );
        let pid = workload.pid();
        let args = ["-p", &pid.to_string(), "--probes", "sched,syscalls"];
        let before = loaded_map_ids();
        let recorder = Recorder::start(&dir.path().join("starts.rec"), &args);
        assert_eq!(new_maps("RUNQ_START", &before), vec![(array_len, 8)], "RUNQ_START at pid_max {pid_max}");
        let syscall_starts = new_maps(profiler_common::syscalls::SYSCALL_START, &before);
        assert_eq!(syscall_starts, vec![(1, 8 * slots)], "one value of a word per slot, at pid_max {pid_max}");
        let counting_slots = new_maps(profiler_common::syscalls::SYSCALL_SLOTS, &before);
        let table_bytes = size_of::<profiler_common::syscalls::SyscallSlot>() << SYSCALL_SLOT_TABLE_BITS;
        assert_eq!(counting_slots, vec![(1, table_bytes as u32)], "one value of all counting slots");
        workload.go();
        workload.wait();
        let recording = recorder.finish();

        assert_eq!(syscall_row(&recording, pid, "getppid").count, GETPPID);
        let getppid_nr = syscalls::Sysno::getppid.id() as u32;
        assert_eq!(recording.syscalls.as_ref().unwrap().latency[&getppid_nr].count(), GETPPID);
        assert!(recording.runq.as_ref().unwrap().system.count() > 0, "run-queue latencies measured");
        assert_eq!(recording.counters.drops.start, 0);
    }
}

/// Two threads whose ids share a slot (pid_max 4194304), each sleeping in one syscall while the
/// other makes its calls: each overwrites the other's entry time, which is counted, and every call
/// still counts, untimed where its time was lost.
#[test]
fn threads_sharing_a_slot_lose_a_latency_never_a_count() {
    let slots = profiler_common::process::MAX_THREAD_SLOTS;
    let _pid_max = PidMax::set(4_194_304);
    let dir = temp_dir();
    let sleep = |micros: &str| ["sleep", "--cpu", "0", "--count", "1", "--interval-us", micros].map(String::from);
    let (first_sleep, second_sleep) = (sleep("300000"), sleep("600000"));
    // Two pids with the same low bits: the first pair of them no live task holds.
    let (mut first, mut second) = (4242..4342)
        .find_map(|low_bits| {
            let first = spawn_with_pid(slots + low_bits, &first_sleep.each_ref().map(String::as_str))?;
            let second = spawn_with_pid(2 * slots + low_bits, &second_sleep.each_ref().map(String::as_str))?;
            Some((first, second))
        })
        .expect("two free pids that share a slot");
    let (first_pid, second_pid) = (first.pid(), second.pid());
    let args = ["-p", &first_pid.to_string(), "-p", &second_pid.to_string(), "--probes", "syscalls"];
    let recorder = Recorder::start(&dir.path().join("shared.rec"), &args);
    first.go();
    std::thread::sleep(std::time::Duration::from_millis(100));
    second.go();
    first.wait();
    second.wait();
    let recording = recorder.finish();

    for pid in [first_pid, second_pid] {
        assert_eq!(syscall_row(&recording, pid, "clock_nanosleep").count, 1, "pid {pid}'s sleep is counted");
        assert_eq!(syscall_row(&recording, pid, "sched_setaffinity").count, 1, "pid {pid}'s pinning is counted");
    }
    let sleep_nr = syscalls::Sysno::clock_nanosleep.id() as u32;
    let timed = recording.syscalls.as_ref().unwrap().latency.get(&sleep_nr).map_or(0, |h| h.count());
    assert!(timed < 2, "the first sleep's entry time was overwritten");
    assert!(recording.counters.drops.start >= 1, "the overwrite is counted");
}
