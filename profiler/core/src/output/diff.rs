//! The text form of a comparison: flagged regressions first, improvements apart, then tables.

use std::fmt::Write as _;

use crate::analysis::{
    diff::{
        ContainerComparison, Diff, FunctionComparison, LatencyComparison, OffCpuComparison, PathComparison,
        SyscallComparison,
    },
    histogram::format_ns,
};
use crate::text::shown;

fn value(v: f64, unit: &str) -> String {
    match unit {
        "ns" => format_ns(v as u64),
        "%" | "% of samples" => format!("{v:.2}%"),
        "/s" => format!("{v:.1}/s"),
        _ => format!("{v:.2} {unit}"),
    }
}

fn change(percent: f64) -> String {
    if percent.is_infinite() { "new".to_string() } else { format!("{percent:+.1}%") }
}

pub fn text(diff: &Diff) -> String {
    let mut out = String::new();
    findings(&mut out, diff);
    if !diff.latency.is_empty() {
        latency(&mut out, &diff.latency);
    }
    if !diff.syscalls.is_empty() {
        syscalls(&mut out, &diff.syscalls);
    }
    if !diff.functions.is_empty() {
        functions(&mut out, &diff.functions);
    }
    if !diff.growing_paths.is_empty() {
        paths(&mut out, &diff.growing_paths);
    }
    if !diff.containers.is_empty() {
        containers(&mut out, &diff.containers);
    }
    if !diff.offcpu.is_empty() {
        offcpu(&mut out, &diff.offcpu);
    }
    out
}

/// Warnings, then the flagged changes: regressions first.
fn findings(w: &mut String, diff: &Diff) {
    for warning in &diff.warnings {
        let _ = writeln!(w, "warning: {}: the comparison is weaker", shown(warning));
    }
    for (title, findings) in [("REGRESSIONS", &diff.regressions), ("Improvements", &diff.improvements)] {
        let _ = writeln!(w, "{title}: {}", findings.len());
        for f in findings {
            let _ = writeln!(
                w,
                "  {:<18} {:<32} {:<12} {:>10} → {:<10} {:>8}   {}",
                f.kind,
                shown(&f.subject),
                f.metric,
                value(f.base, &f.unit),
                value(f.new, &f.unit),
                change(f.change_percent),
                shown(&f.detail)
            );
        }
    }
}

fn latency(w: &mut String, latency: &[LatencyComparison]) {
    let _ = writeln!(w, "\nLatency (base → new; * significant)");
    for c in latency {
        let cells: Vec<String> = c
            .percentiles
            .iter()
            .map(|p| {
                format!(
                    "{} {}→{} {}{}",
                    p.name,
                    format_ns(p.base_ns),
                    format_ns(p.new_ns),
                    change(p.change_percent),
                    if p.significant { "*" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            w,
            "  {:<18} {:<32} n {}→{}  {}",
            c.kind,
            shown(&c.subject),
            c.base_count,
            c.new_count,
            cells.join("  ")
        );
    }
}

/// A mean latency, or why there is none.
fn mean(ns: Option<f64>) -> String {
    ns.map_or_else(|| "not timed".to_string(), |ns| format_ns(ns as u64))
}

fn syscalls(w: &mut String, syscalls: &[SyscallComparison]) {
    let _ = writeln!(w, "\nSyscalls (rate per second, error rate, mean latency)");
    for s in syscalls.iter().take(20) {
        let mut notes = Vec::new();
        if s.new_syscall {
            notes.push("new syscall".to_string());
        }
        if !s.new_errnos.is_empty() {
            notes.push(format!("new errnos {}", s.new_errnos.join(",")));
        }
        let _ = writeln!(
            w,
            "  {:<20} {:>10.1} → {:<10.1} err {:>6.2}% → {:<6.2}%  mean {} → {}  {}",
            s.name,
            s.base_per_second,
            s.new_per_second,
            s.base_error_percent,
            s.new_error_percent,
            mean(s.base_mean_ns),
            mean(s.new_mean_ns),
            notes.join("; ")
        );
    }
}

/// "12.00% → 15.50% " for a share that moved, aligned for a table.
fn shares(before: f64, after: f64) -> String {
    format!("{:>7} → {:<7}", format!("{before:.2}%"), format!("{after:.2}%"))
}

fn functions(w: &mut String, functions: &[FunctionComparison]) {
    let _ = writeln!(w, "\nFunctions (share of samples: self, total)");
    for f in functions {
        let (self_share, total) =
            (shares(f.base_self_percent, f.new_self_percent), shares(f.base_total_percent, f.new_total_percent));
        let kernel = if f.kernel { " [k]" } else { "" };
        let _ = writeln!(w, "  self {self_share} (z {:>5.1})  total {total}  {}{kernel}", f.self_z, shown(&f.function));
    }
}

fn containers(w: &mut String, containers: &[ContainerComparison]) {
    let _ = writeln!(w, "\nContainers (share of samples, syscalls per second)");
    for c in containers {
        let rates = format!(
            "{:>10} → {:<10}",
            format!("{:.1}/s", c.base_syscalls_per_second),
            format!("{:.1}/s", c.new_syscalls_per_second)
        );
        let cpu = shares(c.base_cpu_percent, c.new_cpu_percent);
        let side = match (c.in_base, c.in_new) {
            (true, false) => " (gone)",
            (false, true) => " (new)",
            _ => "",
        };
        let _ = writeln!(w, "  cpu {cpu} (z {:>5.1})  syscalls {rates}  {}{side}", c.cpu_z, shown(&c.container));
    }
}

fn offcpu(w: &mut String, offcpu: &[OffCpuComparison]) {
    let _ = writeln!(w, "\nOff-CPU time (milliseconds blocked per second, under each user function and in each state)");
    for c in offcpu {
        let rates =
            format!("{:>10} → {:<10}", format!("{:.1}", c.base_ms_per_second), format!("{:.1}", c.new_ms_per_second));
        let _ = writeln!(w, "  {rates} (z {:>5.1})  {}", c.z, shown(&c.subject));
    }
}

fn paths(w: &mut String, paths: &[PathComparison]) {
    let _ = writeln!(w, "\nCall paths whose share grew most");
    for p in paths {
        let _ = writeln!(w, "  {}  {}", shares(p.base_percent, p.new_percent), shown(&p.path));
    }
}
