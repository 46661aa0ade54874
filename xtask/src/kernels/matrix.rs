//! The support matrix: for this machine's kernel and each guest kernel, which probes ran with
//! data, which were left out and why, and which tests passed, from the recording each boot made
//! with the default probes (and one with `syscall-counts`, which is not among them). Written to
//! target/kernels/support-matrix.md and, on request, into README.md between its markers.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{MATRIX_ID, Report, kernels_dir, workspace_root};

const PROBES: [&str; 4] = ["sched", "syscalls", "syscall-counts", "cpu"];
const START: &str = "<!-- support-matrix:start -->";
const END: &str = "<!-- support-matrix:end -->";

/// One row: a kernel and what its recordings held.
struct Row {
    kernel: String,
    report: Option<Value>,
    /// The `syscall-counts` recording's.
    counts_report: Option<Value>,
    tests: String,
}

fn read_report(path: &Path) -> Option<Value> {
    fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

pub fn write(report: &Report<'_>, profiler: &Path, update_readme: bool) -> Result<()> {
    let mut rows = vec![host_row(profiler)];
    for (kernel, boots) in &report.kernels {
        let Some(last) = boots.last() else { continue };
        let report = read_report(&last.run_dir.join("matrix.json"));
        let counts_report = read_report(&last.run_dir.join("matrix-counts.json"));
        let tests = &last.tests;
        let passed = tests.iter().filter(|t| t.0 != MATRIX_ID && t.1 == "pass").count();
        let total = tests.iter().filter(|t| t.0 != MATRIX_ID).count();
        let tests = format!("{passed} of {total}");
        rows.push(Row {
            kernel: format!("{} (Debian {}, {})", kernel.release, kernel.series, kernel.version),
            report,
            counts_report,
            tests,
        });
    }
    let binary =
        if profiler.to_string_lossy().contains("musl") { "the static release binary" } else { "the debug build" };
    let table = table(&rows, binary);
    let path = kernels_dir().join("support-matrix.md");
    fs::write(&path, &table).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask: kernels: support matrix in {}", path.display());
    if update_readme {
        update(&workspace_root().join("README.md"), &table)?;
    }
    Ok(())
}

/// This machine's kernel: the same recordings, made here beside the same small workload as in the
/// guests (the profiler leaves itself out, and an idle machine gives no CPU samples in 3 s); the
/// tests of `cargo xtask test` ran here.
fn host_row(profiler: &Path) -> Row {
    let busy = Command::new("sh").args(["-c", "while :; do ls -l /usr/bin > /dev/null; done"]).spawn();
    let record = |name: &str, args: &[&str]| {
        let rec = kernels_dir().join(name);
        let recorded = Command::new(profiler).arg("record").args(args).args(["-q", "-o"]).arg(&rec).status();
        recorded
            .ok()
            .filter(|s| s.success())
            .and_then(|_| Command::new(profiler).arg("report").arg(&rec).arg("--json").output().ok())
            .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
    };
    let report = record("host-matrix.rec", &["-d", "3"]);
    let counts_report = record("host-matrix-counts.rec", &["-d", "2", "--probes", "syscall-counts"]);
    if let Ok(mut busy) = busy {
        let _ = busy.kill();
        let _ = busy.wait();
    }
    let release = report.as_ref().and_then(|r| r["kernel_release"].as_str()).unwrap_or("this machine").to_string();
    Row { kernel: format!("{release} (this machine)"), report, counts_report, tests: "all (`cargo xtask test`)".into() }
}

/// What one probe did on one kernel.
fn cell(report: &Value, probe: &str) -> String {
    let ran = report["probes"].as_array().is_some_and(|p| p.iter().any(|name| name == probe));
    if !ran {
        let reason = report["left_out"]
            .as_array()
            .and_then(|l| l.iter().find(|entry| entry["probe"] == probe))
            .and_then(|entry| entry["reason"].as_str())
            .unwrap_or("not run");
        return format!("left out: {reason}");
    }
    let data = match probe {
        "sched" => report["runq"]["system"]["count"].as_u64(),
        "syscalls" | "syscall-counts" => report["syscalls"]["total"].as_u64(),
        _ => report["cpu"]["samples"].as_u64(),
    };
    match data {
        Some(n) if n > 0 => "yes".into(),
        _ => "ran, no data".into(),
    }
}

fn table(rows: &[Row], binary: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| kernel | {} | kernel features | tests in the guest |", PROBES.join(" | "));
    let _ = writeln!(out, "|---|{}---|---|", "---|".repeat(PROBES.len()));
    for row in rows {
        let (cells, features) = match &row.report {
            Some(report) => (
                PROBES
                    .iter()
                    .map(|&probe| match (probe, &row.counts_report) {
                        ("syscall-counts", Some(counts)) => cell(counts, probe),
                        ("syscall-counts", None) => "no recording".into(),
                        _ => cell(report, probe),
                    })
                    .collect::<Vec<_>>(),
                report["kernel_features"]
                    .as_array()
                    .map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            ),
            None => (vec!["no recording".to_string(); PROBES.len()], String::new()),
        };
        let _ = writeln!(out, "| {} | {} | {features} | {} |", row.kernel, cells.join(" | "), row.tests);
    }
    let _ = writeln!(
        out,
        "\n\"yes\": a 3 s recording with the default probes (2 s with `--probes syscall-counts` for its \
         column), made by {binary}, held that probe's data. \
         Generated by `cargo xtask kernels --update-readme`."
    );
    out
}

/// Replaces what stands between the markers in `readme`.
fn update(readme: &Path, table: &str) -> Result<()> {
    let text = fs::read_to_string(readme)?;
    let (Some(start), Some(end)) = (text.find(START), text.find(END)) else {
        bail!("{} has no {START} ... {END} section", readme.display());
    };
    let updated = format!("{}{START}\n{table}{}", &text[..start], &text[end..]);
    fs::write(readme, updated)?;
    eprintln!("xtask: kernels: updated the support matrix in {}", readme.display());
    Ok(())
}
