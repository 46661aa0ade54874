//! One interval of `top` as numbers: the hottest functions, and per process its CPU share,
//! run-queue latency and its slowest syscall (by p99). Built from the session's interval (the kernel's
//! aggregates drained once), never from events; testable without BPF.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use crate::{
    analysis::{
        histogram::{format_ns, percentiles},
        summary::syscall_name,
    },
    recording::Recording,
    text::shown,
};

/// Latencies (run-queue waits, calls of one syscall) a process needs in one interval for its p99
/// to mean more than its maximum.
pub use crate::analysis::summary::MIN_SAMPLES_FOR_RANKING as MIN_EVENTS_FOR_P99;

/// One interval, ready to show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Since `top` started.
    pub elapsed: Duration,
    /// How long this interval was.
    pub length: Duration,
    pub cpus: usize,
    pub samples: u64,
    pub dropped: u64,
    pub programs: usize,
    pub probes: Vec<&'static str>,
    /// Hottest first.
    pub functions: Vec<HotFunction>,
    /// In no order: the view sorts them.
    pub processes: Vec<ProcessRow>,
    /// Syscalls were counted, not timed (`--probes syscall-counts`): no latency to show.
    pub syscalls_counted_only: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HotFunction {
    pub function: String,
    /// The file name of the function's module, or empty.
    pub module: String,
    pub kernel: bool,
    /// Samples with this function at the leaf, as a percentage of the interval's samples.
    pub self_percent: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProcessRow {
    pub tgid: u32,
    pub comm: String,
    /// Of one CPU, as top(1) shows it (a process busy on two CPUs is at 200 %); `None` without the
    /// cpu probe.
    pub cpu_percent: Option<f64>,
    pub runq_events: u64,
    pub runq_p50_ns: Option<u64>,
    /// Only with `MIN_EVENTS_FOR_P99` latencies or more.
    pub runq_p99_ns: Option<u64>,
    pub syscalls_per_second: f64,
    /// The syscall with the highest p99 latency, and that p99, among those the process called
    /// `MIN_EVENTS_FOR_P99` times or more in the interval.
    pub slowest_syscall: Option<(String, u64)>,
}

/// What orders the process table: the keys c, r and s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// CPU share.
    #[default]
    Cpu,
    /// Run-queue latency (p99, else p50).
    Runq,
    /// The slowest syscall's p99 latency.
    Syscalls,
}

impl SortKey {
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Cpu => "CPU",
            SortKey::Runq => "run-queue latency",
            SortKey::Syscalls => "syscall latency",
        }
    }
}

/// What a snapshot is built from, besides the interval's data.
pub struct Context<'a> {
    pub elapsed: Duration,
    pub length: Duration,
    pub cpus: usize,
    pub frequency_hz: u32,
    pub programs: usize,
    pub probes: &'a [&'static str],
    /// Names of the processes seen so far, by tgid.
    pub names: &'a HashMap<u32, String>,
}

impl Snapshot {
    pub fn new(delta: &Recording, context: &Context<'_>) -> Snapshot {
        let seconds = context.length.as_secs_f64().max(1e-3);
        let mut rows: HashMap<u32, ProcessRow> = HashMap::new();
        let has_stacks = delta.stacks.is_some();
        let new_row = |tgid: u32| ProcessRow {
            tgid,
            comm: context.names.get(&tgid).cloned().unwrap_or_else(|| delta.process_name(tgid).to_string()),
            cpu_percent: has_stacks.then_some(0.0),
            runq_events: 0,
            runq_p50_ns: None,
            runq_p99_ns: None,
            syscalls_per_second: 0.0,
            slowest_syscall: None,
        };
        let mut functions = Vec::new();
        let mut samples = 0;
        if let Some(stacks) = &delta.stacks {
            samples = stacks.samples();
            let mut by_function: HashMap<(&str, bool), (u64, &str)> = HashMap::new();
            let mut per_process: HashMap<u32, u64> = HashMap::new();
            for stack in &stacks.stacks {
                *per_process.entry(stack.tgid).or_default() += stack.count;
                let Some(leaf) = stack.frames.first().and_then(|&index| stacks.frame(index)) else { continue };
                let module = stacks.module(leaf).map_or("", |m| file_name(&m.path));
                by_function.entry((leaf.function.as_str(), leaf.kernel)).or_insert((0, module)).0 += stack.count;
            }
            let whole_cpu = f64::from(context.frequency_hz.max(1)) * seconds;
            for (tgid, count) in per_process {
                rows.entry(tgid).or_insert_with(|| new_row(tgid)).cpu_percent = Some(count as f64 * 100.0 / whole_cpu);
            }
            functions = by_function
                .into_iter()
                .map(|((function, kernel), (count, module))| HotFunction {
                    function: function.to_string(),
                    module: module.to_string(),
                    kernel,
                    self_percent: crate::analysis::percent(count, samples),
                })
                .collect();
            functions
                .sort_by(|a, b| b.self_percent.total_cmp(&a.self_percent).then_with(|| a.function.cmp(&b.function)));
        }
        if let Some(runq) = &delta.runq {
            for (&tgid, histogram) in &runq.per_process {
                let p = percentiles(histogram);
                let r = rows.entry(tgid).or_insert_with(|| new_row(tgid));
                r.runq_events = p.count;
                r.runq_p50_ns = (p.count > 0).then_some(p.p50_ns);
                r.runq_p99_ns = (p.count >= MIN_EVENTS_FOR_P99).then_some(p.p99_ns);
            }
        }
        let mut syscalls_counted_only = false;
        if let Some(syscalls) = &delta.syscalls {
            syscalls_counted_only = syscalls.counts_only;
            for call in &syscalls.per_process {
                let r = rows.entry(call.tgid).or_insert_with(|| new_row(call.tgid));
                r.syscalls_per_second += call.count as f64 / seconds;
                let Some(latency) = call.latency.as_ref().map(percentiles) else { continue };
                if latency.count < MIN_EVENTS_FOR_P99 {
                    continue;
                }
                if r.slowest_syscall.as_ref().is_none_or(|(_, slowest)| latency.p99_ns > *slowest) {
                    r.slowest_syscall = Some((syscall_name(call.nr), latency.p99_ns));
                }
            }
        }
        Snapshot {
            elapsed: context.elapsed,
            length: context.length,
            cpus: context.cpus,
            samples,
            dropped: delta.counters.drops.total(),
            programs: context.programs,
            probes: context.probes.to_vec(),
            functions,
            processes: rows.into_values().collect(),
            syscalls_counted_only,
        }
    }

    pub fn samples_per_second(&self) -> f64 {
        self.samples as f64 / self.length.as_secs_f64().max(1e-3)
    }

    /// The processes in the order `key` gives, ties by pid.
    pub fn sorted(&self, key: SortKey) -> Vec<&ProcessRow> {
        let mut rows: Vec<&ProcessRow> = self.processes.iter().collect();
        let value = |row: &ProcessRow| match key {
            SortKey::Cpu => row.cpu_percent.unwrap_or(0.0),
            SortKey::Runq => row.runq_p99_ns.or(row.runq_p50_ns).unwrap_or(0) as f64,
            SortKey::Syscalls => row.slowest_syscall.as_ref().map_or(0, |(_, p99)| *p99) as f64,
        };
        rows.sort_by(|a, b| value(b).total_cmp(&value(a)).then(a.tgid.cmp(&b.tgid)));
        rows
    }

    /// The snapshot as lines of tab-separated `key=value` fields, each line led by its kind
    /// (`snapshot`, `function`, `process`), for scripts: what `top` prints when its output is not
    /// a terminal. Strings from the traced system are escaped, so a field never holds a tab or a
    /// newline.
    pub fn text(&self, key: SortKey, rows: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "snapshot\telapsed_s={:.3}\tinterval_s={:.3}\tcpus={}\tsamples_per_s={:.1}\tdropped={}\tprograms={}\tprobes={}",
            self.elapsed.as_secs_f64(),
            self.length.as_secs_f64(),
            self.cpus,
            self.samples_per_second(),
            self.dropped,
            self.programs,
            self.probes.join(","),
        );
        for function in self.functions.iter().take(rows) {
            let _ = writeln!(
                out,
                "function\tself_percent={:.1}\tkind={}\tname={}\tmodule={}",
                function.self_percent,
                if function.kernel { "kernel" } else { "user" },
                shown(&function.function),
                shown(&function.module),
            );
        }
        for row in self.sorted(key).into_iter().take(rows) {
            let _ = writeln!(
                out,
                "process\tpid={}\tcomm={}\tcpu_percent={}\trunq_events={}\trunq_p50={}\trunq_p99={}\tsyscalls_per_s={:.1}\tslowest_syscall_p99={}",
                row.tgid,
                shown(&row.comm),
                row.cpu_percent.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
                row.runq_events,
                row.runq_p50_ns.map_or_else(|| "-".into(), format_ns),
                row.runq_p99_ns.map_or_else(|| "-".into(), format_ns),
                row.syscalls_per_second,
                row.slowest_syscall
                    .as_ref()
                    .map_or_else(|| "-".into(), |(name, p99)| format!("{name}:{}", format_ns(*p99))),
            );
        }
        out.push('\n');
        out
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::recording::{Frame, LatencyHistogram, Module, ProcessSyscall, RunqLatency, Stack, Stacks, Syscalls};

    /// Process 10 (named with a newline) runs `hot_seventy` 70 and `hot_thirty` 30 samples,
    /// process 20 a kernel function 100 samples and makes syscalls; at 100 Hz over one second.
    pub fn example() -> Snapshot {
        let frame = |function: &str, kernel: bool| Frame {
            function: function.into(),
            module: (!kernel).then_some(0),
            kernel,
            inlined: false,
        };
        let stack = |tgid, frame, count| Stack { tgid, tid: 0, frames: vec![frame], count, blocks: 0 };
        let nr = |sysno: syscalls::Sysno| sysno.id() as u32;
        let delta = Recording {
            stacks: Some(Stacks {
                frames: vec![frame("hot_seventy", false), frame("hot_thirty", false), frame("do_syscall_64", true)],
                modules: vec![Module { path: "/usr/bin/workload".into(), build_id: None }],
                stacks: vec![stack(10, 0, 70), stack(10, 1, 30), stack(20, 2, 100)],
            }),
            runq: Some(RunqLatency {
                per_process: [
                    (10, LatencyHistogram::from_values(vec![1_000; 150])),
                    (20, LatencyHistogram::from_values(vec![5_000; 10])),
                ]
                .into(),
                ..RunqLatency::default()
            }),
            syscalls: Some(Syscalls {
                per_process: vec![
                    ProcessSyscall {
                        tgid: 20,
                        nr: nr(syscalls::Sysno::getppid),
                        count: 100,
                        total_ns: 100_000,
                        latency: Some(LatencyHistogram::from_values(vec![1_000; 100])),
                        ..Default::default()
                    },
                    // Slower, but too few calls for a p99.
                    ProcessSyscall {
                        tgid: 20,
                        nr: nr(syscalls::Sysno::openat),
                        count: 10,
                        total_ns: 10_000_000,
                        latency: Some(LatencyHistogram::from_values(vec![1_000_000; 10])),
                        ..Default::default()
                    },
                    // 99 fast reads and 11 slow ones: a p99 of 100 µs, a mean of 10.9 µs.
                    ProcessSyscall {
                        tgid: 20,
                        nr: nr(syscalls::Sysno::read),
                        count: 110,
                        total_ns: 99 * 1_000 + 11 * 100_000,
                        latency: Some(LatencyHistogram::from_values([vec![1_000; 99], vec![100_000; 11]].concat())),
                        ..Default::default()
                    },
                ],
                ..Syscalls::default()
            }),
            ..Recording::default()
        };
        let names = [(10, "work\nload".to_string()), (20, "kworker".to_string())].into();
        let context = Context {
            elapsed: Duration::from_secs(3),
            length: Duration::from_secs(1),
            cpus: 2,
            frequency_hz: 100,
            programs: 7,
            probes: &["sched", "syscalls", "cpu"],
            names: &names,
        };
        Snapshot::new(&delta, &context)
    }

    #[test]
    fn shares_percentiles_and_the_slowest_syscall() {
        let snapshot = example();
        let functions: Vec<(&str, bool, f64)> =
            snapshot.functions.iter().map(|f| (f.function.as_str(), f.kernel, f.self_percent)).collect();
        assert_eq!(
            functions,
            [("do_syscall_64", true, 50.0), ("hot_seventy", false, 35.0), ("hot_thirty", false, 15.0)]
        );
        assert_eq!(snapshot.functions[1].module, "workload");
        assert_eq!(snapshot.samples_per_second(), 200.0);
        let row = |tgid| snapshot.processes.iter().find(|r| r.tgid == tgid).unwrap();
        assert_eq!(row(10).cpu_percent, Some(100.0));
        assert_eq!(row(10).comm, "work\nload");
        assert!(row(10).runq_p99_ns.is_some_and(|p99| p99.abs_diff(1_000) < 50));
        // Ten waits: a p50, but no p99 that would only be their maximum.
        assert_eq!((row(20).runq_events, row(20).runq_p99_ns), (10, None));
        assert!(row(20).runq_p50_ns.is_some());
        let (name, p99) = row(20).slowest_syscall.clone().unwrap();
        assert!(name == "read" && p99.abs_diff(100_000) < 6_500, "{name} {p99}");
        assert_eq!(row(20).syscalls_per_second, 220.0);
        assert_eq!(row(10).slowest_syscall, None);
    }

    #[test]
    fn sorts_by_each_key() {
        let snapshot = example();
        let order = |key| snapshot.sorted(key).iter().map(|r| r.tgid).collect::<Vec<_>>();
        assert_eq!(order(SortKey::Cpu), [10, 20]);
        assert_eq!(order(SortKey::Runq), [20, 10]);
        assert_eq!(order(SortKey::Syscalls), [20, 10]);
    }

    #[test]
    fn plain_text_is_one_line_per_row_with_names_escaped() {
        let text = example().text(SortKey::Cpu, 20);
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1 + 3 + 2, "{text}");
        assert!(lines[0].starts_with("snapshot\telapsed_s=3.000\tinterval_s=1.000\tcpus=2\tsamples_per_s=200.0"));
        assert!(lines[0].ends_with("\tprobes=sched,syscalls,cpu"));
        assert_eq!(lines[2], "function\tself_percent=35.0\tkind=user\tname=hot_seventy\tmodule=workload");
        assert!(lines[4].starts_with("process\tpid=10\tcomm=work\\x0aload\tcpu_percent=100.0\trunq_events=150\t"));
        assert!(lines[5].contains("\tsyscalls_per_s=220.0\tslowest_syscall_p99=read:"), "{}", lines[5]);
        assert!(text.ends_with("\n\n"));
    }
}
