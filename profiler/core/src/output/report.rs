//! The text report: what a person reads at the end of `record` and from `report FILE`.

use std::{borrow::Cow, fmt::Write as _};

use crate::{
    analysis::{
        histogram::{Percentiles, format_ns},
        hotpaths::HotPaths,
        percent,
        summary::{ContainerSummary, Outliers, RunqSummary, Summary, SyscallSummary, syscall_name},
        waits::Waits,
    },
    recording::{LatencyHistogram, Recording},
    text::shown,
};

pub fn text(summary: &Summary) -> String {
    let mut out = String::new();
    header(&mut out, summary);
    if let Some(runq) = &summary.runq {
        run_queue(&mut out, runq);
    }
    if let Some(cpu) = &summary.cpu {
        hot_paths(&mut out, cpu);
        user_stacks(&mut out, summary);
    }
    if let Some(waits) = &summary.waits {
        where_threads_wait(&mut out, waits);
    }
    containers(&mut out, summary);
    outliers(&mut out, &summary.outliers);
    if let Some(syscalls) = &summary.syscalls {
        syscall_tables(&mut out, syscalls);
    }
    out
}

/// Where and how the recording was made, and what was lost.
fn header(w: &mut String, summary: &Summary) {
    let _ = writeln!(
        w,
        "Recording: {} ({}, {} CPUs), {:.1}s, probes: {}",
        shown(&summary.hostname),
        shown(&summary.kernel_release),
        summary.cpus,
        summary.duration_s,
        summary.probes.join(", ")
    );
    for left_out in &summary.left_out {
        let _ = writeln!(w, "Left out: the {} probe ({})", left_out.probe, left_out.reason);
    }
    if !summary.pids.is_empty() {
        let pids: Vec<String> = summary.pids.iter().map(u32::to_string).collect();
        let _ = writeln!(w, "Filter: pid {}", pids.join(", "));
    }
    if let Some(cgroup) = &summary.cgroup {
        let _ = writeln!(w, "Filter: cgroup {}", shown(cgroup));
    }
    if summary.excluded_self {
        let _ = writeln!(w, "Filter: the profiler's own process left out (--include-self keeps it)");
    }
    let _ = writeln!(w, "Events: {}   Dropped: {}", summary.events, summary.dropped_total);
    if summary.dropped_total > 0 {
        let d = &summary.drops;
        let _ = writeln!(
            w,
            "  drops: run-queue per-process {}, syscall per-process {}, errno {}, start times {}, process names {}, stack collisions {}, stack errors {}, samples {}, new processes {}, syscall latency per-process {}, off-CPU times {}, blocked threads {}",
            d.runq_process,
            d.syscall_process,
            d.syscall_errno,
            d.start,
            d.process_names,
            d.stack_collisions,
            d.stack_errors,
            d.samples,
            d.new_processes,
            d.syscall_latency_process,
            d.offcpu_times,
            d.offcpu_blocked
        );
    }
}

fn run_queue(w: &mut String, runq: &RunqSummary) {
    let _ = writeln!(w, "\nRun-queue latency (wakeup or preemption -> on CPU)");
    let _ = writeln!(
        w,
        "  context switches {}, involuntary {} ({:.1}%), wakeups {}",
        runq.sched_switches,
        runq.involuntary_switches,
        percent(runq.involuntary_switches, runq.sched_switches),
        runq.wakeups
    );
    let _ =
        writeln!(w, "  {:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "count", "p50", "p90", "p99", "p99.9", "max");
    latency_row(w, "system-wide", &runq.system);
    for (cpu, p) in runq.per_cpu.iter().enumerate().filter(|(_, p)| p.count > 0) {
        latency_row(w, &format!("cpu {cpu}"), p);
    }
    if !runq.worst_processes.is_empty() {
        let _ = writeln!(w, "  worst p99 by process name (at least 100 waits):");
        for p in &runq.worst_processes {
            latency_row(w, &process_label(&p.comm, p.tgid, p.processes), &p.latency);
        }
    }
}

/// What stands out inside this one recording.
fn outliers(w: &mut String, outliers: &Outliers) {
    if outliers.runq_processes.is_empty() && outliers.failing_syscalls.is_empty() {
        return;
    }
    let _ = writeln!(w, "\nStands out");
    for p in &outliers.runq_processes {
        let _ = writeln!(
            w,
            "  {}: run-queue p99 {} against a median of {} across process names (robust z {:.1})",
            process_label(&p.comm, p.tgid, p.processes),
            format_ns(p.p99_ns),
            format_ns(p.median_p99_ns),
            p.z
        );
    }
    for f in &outliers.failing_syscalls {
        let errno = f.top_errno.as_deref().map_or(String::new(), |e| format!(", mostly {e}"));
        let _ = writeln!(w, "  {}: {} of {} calls failed ({:.0}%{errno})", f.name, f.errors, f.count, f.error_percent);
    }
}

fn syscall_tables(w: &mut String, syscalls: &SyscallSummary) {
    let _ = writeln!(
        w,
        "\nSyscalls: {} calls, {} errors ({:.2}%)",
        syscalls.total,
        syscalls.errors,
        percent(syscalls.errors, syscalls.total)
    );
    for note in syscalls.latency_not_measured.into_iter().chain(syscalls.latency_sampled.as_deref()) {
        let _ = writeln!(w, "  {note}");
    }
    let tables = [("by count", &syscalls.by_count), ("by total time", &syscalls.by_time)];
    for (title, rows) in tables.into_iter().filter(|(_, rows)| !rows.is_empty()) {
        let _ = writeln!(w, "  top {title}:");
        let timed = syscalls.latency_not_measured.is_none();
        let latency_titles = format!(" {:>10} {:>9} {:>9} {:>9}", "total", "mean", "p50", "p99");
        let _ = writeln!(
            w,
            "  {:<20} {:>10}{} {:>8}  commonest errno",
            "syscall",
            "count",
            if timed { latency_titles.as_str() } else { "" },
            "errors"
        );
        for row in rows.iter() {
            let errno = row.top_errno.as_ref().map_or(String::new(), |(name, n)| format!("{name} ({n})"));
            let latency = match (row.total_ns, &row.latency) {
                // None of its calls timed (sampled out, or entry times lost): no latency, not zero.
                (Some(_), Some(latency)) if latency.count == 0 => {
                    format!(" {:>10} {:>9} {:>9} {:>9}", "-", "-", "-", "-")
                }
                (Some(total), Some(latency)) => format!(
                    " {:>10} {:>9} {:>9} {:>9}",
                    format_ns(total),
                    format_ns(latency.mean_ns as u64),
                    format_ns(latency.p50_ns),
                    format_ns(latency.p99_ns)
                ),
                _ => String::new(),
            };
            let _ = writeln!(w, "  {:<20} {:>10}{latency} {:>8}  {}", row.name, row.count, row.errors, errno);
        }
    }
    if !syscalls.slowest_by_process.is_empty() {
        let _ = writeln!(w, "  slowest by process (p99):");
        let _ =
            writeln!(w, "  {:<24} {:<16} {:>10} {:>9} {:>9} {:>9}", "process", "syscall", "count", "p50", "p99", "max");
        for row in &syscalls.slowest_by_process {
            let _ = writeln!(
                w,
                "  {:<24} {:<16} {:>10} {:>9} {:>9} {:>9}",
                process_label(&row.comm, row.tgid, row.processes),
                row.syscall,
                row.latency.count,
                format_ns(row.latency.p50_ns),
                format_ns(row.latency.p99_ns),
                format_ns(row.latency.max_ns)
            );
        }
    }
    if !syscalls.errors_by_process.is_empty() {
        let _ = writeln!(w, "  errors by process:");
        for row in &syscalls.errors_by_process {
            let errnos: Vec<String> = row.errnos.iter().map(|(name, n)| format!("{name} {n}")).collect();
            let _ = writeln!(
                w,
                "  {:<24} {:<16} {:>8} of {:<10} {}",
                process_label(&row.comm, row.tgid, row.processes),
                row.syscall,
                row.errors,
                row.count,
                errnos.join(", ")
            );
        }
    }
}

/// How whole the user stacks are, and what the unwind tables cost.
fn user_stacks(w: &mut String, summary: &Summary) {
    let total: u64 = summary.stack_ends.iter().map(|(_, n)| n).sum();
    if total > 0 {
        let ends: Vec<String> =
            summary.stack_ends.iter().map(|(end, n)| format!("{end} {:.1}%", percent(*n, total))).collect();
        let _ = writeln!(w, "  user stacks: {}", ends.join(", "));
    }
    if let Some(tables) = &summary.unwind {
        let _ = writeln!(
            w,
            "  unwind tables: {} files, {} rows of {} ({} did not fit, {} without call frame information), built in {:.1} ms",
            tables.tables,
            tables.rows,
            tables.row_capacity,
            tables.no_room,
            tables.no_table,
            tables.build_ns as f64 / 1e6
        );
    }
}

fn hot_paths(w: &mut String, cpu: &HotPaths) {
    let idle = cpu.idle_percent.map_or(String::new(), |idle| format!(", machine idle {idle:.1}%"));
    let _ = writeln!(w, "\nOn-CPU samples: {} at {} Hz per CPU{idle}", cpu.samples, cpu.frequency_hz);
    if !cpu.processes.is_empty() {
        let _ = writeln!(w, "  busiest processes:");
        for p in &cpu.processes {
            let _ =
                writeln!(w, "  {:>6.1}%  {:>8}  {}", p.percent, p.samples, process_label(&p.comm, p.tgid, p.processes));
        }
    }
    for (title, rows) in [("self", &cpu.by_self), ("total", &cpu.by_total)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(w, "  hottest functions by {title} samples:");
        let _ = writeln!(w, "  {:>7} {:>7}  function", "self", "total");
        for f in rows.iter() {
            let module = f.module.as_deref().map(|m| m.rsplit('/').next().unwrap_or(m)).unwrap_or("?");
            let _ = writeln!(
                w,
                "  {:>6.1}% {:>6.1}%  {}{} ({})",
                f.self_percent,
                f.total_percent,
                shown(&f.function),
                if f.kernel { " [k]" } else { "" },
                shown(module)
            );
        }
    }
    if !cpu.heaviest_paths.is_empty() {
        let _ = writeln!(w, "  heaviest call paths (leafmost frames):");
        for path in &cpu.heaviest_paths {
            let _ = writeln!(
                w,
                "  {:>6.1}%  {}: {}",
                path.percent,
                process_label(&path.comm, path.tgid, path.processes),
                leafmost(&path.frames, 6)
            );
        }
    }
}

/// The off-CPU section: how long threads were blocked, in which state, where.
fn where_threads_wait(w: &mut String, waits: &Waits) {
    let estimate = match waits.estimate_error_percent {
        Some(error) => format!(", estimated from 1 in {} blocks (standard error ±{error:.1}%)", waits.sample_one_in),
        None => String::new(),
    };
    let _ = writeln!(
        w,
        "\nWhere threads wait (off CPU): {} blocked in {} blocks of at least {}{estimate}",
        format_ns(waits.blocked_ns),
        waits.blocks,
        format_ns(waits.min_block_ns)
    );
    let states: Vec<String> =
        waits.states.iter().map(|s| format!("{} {} ({:.1}%)", s.state, format_ns(s.ns), s.percent)).collect();
    if !states.is_empty() {
        let _ = writeln!(w, "  by state: {}", states.join(", "));
    }
    if !waits.processes.is_empty() {
        let _ = writeln!(w, "  processes by time blocked:");
        let _ = writeln!(w, "  {:>10} {:>6} {:>10}  process", "blocked", "", "in D");
        for p in &waits.processes {
            let _ = writeln!(
                w,
                "  {:>10} {:>5.1}% {:>10}  {}",
                format_ns(p.ns),
                p.percent,
                format_ns(p.uninterruptible_ns),
                process_label(&p.comm, p.tgid, p.processes)
            );
        }
    }
    if !waits.functions.is_empty() {
        let _ = writeln!(w, "  user functions threads blocked under:");
        for f in &waits.functions {
            let module = f.module.as_deref().map(|m| m.rsplit('/').next().unwrap_or(m)).unwrap_or("?");
            let _ = writeln!(
                w,
                "  {:>10} {:>5.1}%  {} ({})",
                format_ns(f.ns),
                f.percent,
                shown(&f.function),
                shown(module)
            );
        }
    }
    if !waits.heaviest_paths.is_empty() {
        let _ = writeln!(w, "  heaviest blocking paths (leafmost user frames ⇒ kernel frames that wait):");
        for path in &waits.heaviest_paths {
            // The scheduler's own frames are in every path: the frames above them tell the waits apart.
            let kernel: Vec<Cow<str>> = path
                .kernel
                .iter()
                .filter(|f| !matches!(f.as_str(), "schedule" | "__schedule"))
                .map(|f| shown(f))
                .collect();
            let _ = writeln!(
                w,
                "  {:>10} {:>5.1}%  {}: {} ⇒ {} {}",
                format_ns(path.ns),
                path.percent,
                process_label(&path.comm, path.tgid, path.processes),
                leafmost(&path.user, 3),
                kernel[kernel.len().saturating_sub(4)..].join(" → "),
                shown(&path.state)
            );
        }
    }
}

/// The last `count` frames of a path, root first, as the heaviest paths show them.
fn leafmost(frames: &[String], count: usize) -> String {
    let skip = frames.len().saturating_sub(count);
    let tail: Vec<Cow<str>> = frames[skip..].iter().map(|f| shown(f)).collect();
    let ellipsis = if skip > 0 { "… ← " } else { "" };
    format!("{ellipsis}{}", tail.join(" → "))
}

/// The containers and pods the processes ran in, with their share of the samples and calls.
fn containers(w: &mut String, summary: &Summary) {
    if summary.containers.is_empty() {
        return;
    }
    let samples = summary.cpu.as_ref().map(|cpu| cpu.samples);
    let _ = writeln!(w, "\nContainers:");
    for ContainerSummary { container, processes, cpu_samples, syscalls } in &summary.containers {
        let mut label = if container.id.is_empty() { "(pod)".to_string() } else { container.short_id().to_string() };
        if let Some(name) = &container.name {
            let _ = write!(label, " {}", shown(name));
        }
        if let Some(runtime) = &container.runtime {
            let _ = write!(label, " {}", shown(runtime));
        }
        match (&container.namespace, &container.pod_name, &container.pod_uid) {
            (Some(namespace), Some(pod), _) => {
                let _ = write!(label, ", pod {}/{}", shown(namespace), shown(pod));
            }
            (_, _, Some(uid)) => {
                let _ = write!(label, ", pod {}", shown(uid));
            }
            _ => {}
        }
        if let Some(qos) = &container.qos_class {
            let _ = write!(label, " ({})", shown(qos));
        }
        let cpu = samples.map_or(String::new(), |total| format!("  {:>5.1}% CPU", percent(*cpu_samples, total)));
        let mut names: Vec<String> = processes
            .iter()
            .take(PROCESSES_PER_CONTAINER)
            .map(|p| process_label(&p.comm, p.tgid, p.processes))
            .collect();
        if processes.len() > PROCESSES_PER_CONTAINER {
            names.push(format!("+{} more", processes.len() - PROCESSES_PER_CONTAINER));
        }
        let _ = writeln!(w, "  {label}{cpu}  {syscalls} syscalls: {}", names.join(", "));
    }
    let left_out = summary.container_count - summary.containers.len();
    if left_out > 0 {
        let _ = writeln!(w, "  +{left_out} more (--top, or report --json)");
    }
}

/// Processes named on a container's line; the rest are counted.
const PROCESSES_PER_CONTAINER: usize = 6;

/// `comm [pid]` for one process, `comm (N processes)` for a name many processes shared.
fn process_label(comm: &str, tgid: u32, processes: usize) -> String {
    match processes {
        1 => format!("{} [{tgid}]", shown(comm)),
        n => format!("{} ({n} processes)", shown(comm)),
    }
}

fn latency_row(w: &mut String, label: &str, p: &Percentiles) {
    let _ = writeln!(
        w,
        "  {:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        truncate(label, 34),
        p.count,
        format_ns(p.p50_ns),
        format_ns(p.p90_ns),
        format_ns(p.p99_ns),
        format_ns(p.p999_ns),
        format_ns(p.max_ns)
    );
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width { s.to_string() } else { s.chars().take(width - 1).chain(['…']).collect() }
}

/// Text histograms in the style of bcc's runqlat, one line per non-empty bucket (ours are 16
/// times finer, so empty ranges between them are skipped rather than printed).
pub fn histograms(recording: &Recording, top: usize) -> String {
    let mut out = String::new();
    if let Some(runq) = &recording.runq {
        out.push_str("\nRun-queue latency, system-wide\n");
        out.push_str(&histogram_text(&runq.system));
    }
    if let Some(syscalls) = &recording.syscalls {
        let mut busiest: Vec<(&u32, &LatencyHistogram)> = syscalls.latency.iter().collect();
        busiest.sort_by_key(|(_, h)| std::cmp::Reverse(h.count()));
        for (&nr, histogram) in busiest.into_iter().take(top) {
            let _ = write!(out, "\nSyscall latency: {}\n", syscall_name(nr));
            out.push_str(&histogram_text(histogram));
        }
    }
    out
}

pub fn histogram_text(histogram: &LatencyHistogram) -> String {
    const BAR: usize = 40;
    let mut out = String::new();
    let max = histogram.buckets.iter().map(|&(_, c)| c).max().unwrap_or(0);
    let _ = writeln!(out, "  {:>21} : {:<10} distribution", "range", "count");
    for (lower, upper, count) in histogram.ranges() {
        let stars = if max == 0 { 0 } else { ((count as u128 * BAR as u128).div_ceil(max as u128)) as usize };
        let upper = if upper == u64::MAX { "inf".to_string() } else { format_ns(upper) };
        let _ =
            writeln!(out, "  {:>9} -> {:<9} : {:<10} |{:<BAR$}|", format_ns(lower), upper, count, "*".repeat(stars));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's worth of containers: the report lists the `top` busiest, each with a few of its
    /// processes, and counts the rest.
    #[test]
    fn many_containers_and_processes_are_counted_not_listed() {
        use crate::recording::{Container, Process};
        let mut recording = Recording::default();
        for tgid in 1..=30u32 {
            // 15 containers of one process, and one (the first by id) of 15.
            let id = format!("{:064x}", if tgid <= 15 { tgid } else { 0 });
            let container = Container { id, runtime: Some("containerd".into()), ..Default::default() };
            recording
                .processes
                .insert(tgid, Process { comm: format!("p{tgid}"), container: Some(container), ..Default::default() });
        }
        let summary = Summary::new(&recording, 10);
        assert_eq!((summary.containers.len(), summary.container_count), (10, 16));
        let text = text(&summary);
        assert!(text.contains("  +6 more (--top, or report --json)"), "{text}");
        let busy = text.lines().find(|l| l.contains("p16 [16]")).expect("the container of 15");
        assert!(busy.ends_with("p21 [21], +9 more"), "{busy}");
    }

    #[test]
    fn histogram_lines_show_ranges_and_scaled_bars() {
        let histogram = LatencyHistogram { buckets: vec![(5, 10), (100, 40)] };
        let text = histogram_text(&histogram);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("5ns -> 6ns") && lines[1].contains(&format!("|{:<40}|", "*".repeat(10))));
        assert!(lines[2].contains(&format!("|{}|", "*".repeat(40))));
    }
}
