//! Errors from loading programs, in the words a user can act on: a permission error says which
//! privileges are needed; a verifier rejection quotes the reason, which is at the end of the
//! verifier's log, after the instructions it walked, not its first line; with `-v` the whole log is
//! written to a file, named in the error.

use std::path::PathBuf;

use anyhow::anyhow;
use aya::programs::ProgramError;

/// Turns a program's load or attach error into one line.
pub fn explain(program: &str, error: ProgramError, keep_log: bool) -> anyhow::Error {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            // The verifier refuses some programs with EACCES too, and then says why in its log.
            if is_permission_error(&io_error) && log.trim().is_empty() {
                return permission_advice(&io_error);
            }
            let reason = reason(&log).unwrap_or_else(|| io_error.to_string());
            let saved = match keep_log {
                true => match save_log(program, &log) {
                    Ok(path) => format!("; the whole verifier log is in {}", path.display()),
                    Err(error) => format!("; the verifier log could not be saved: {error}"),
                },
                false => "; run with -v to save the whole verifier log".into(),
            };
            anyhow!("the kernel's verifier rejected program {program}: {reason}{saved}")
        }
        ProgramError::SyscallError(syscall) if is_permission_error(&syscall.io_error) => {
            permission_advice(&syscall.io_error)
        }
        other => anyhow::Error::new(other).context(format!("cannot load program {program}")),
    }
}

/// Whether the kernel refused for lack of privileges (EPERM, EACCES).
pub fn is_permission_error(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

pub fn permission_advice(error: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "the kernel refused to load eBPF programs ({error}): run as root with CAP_BPF and CAP_PERFMON, and check kernel.unprivileged_bpf_disabled and lockdown"
    )
}

/// The reason at the end of a verifier log: its last line that is not a statistic, with the
/// instruction it stopped at when the line before names one.
pub fn reason(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|line| !line.is_empty() && !is_statistic(line)).collect();
    let (&last, before) = lines.split_last()?;
    let instruction = before.iter().rev().find(|line| !line.starts_with(';')).filter(|line| is_instruction(line));
    Some(match instruction {
        Some(instruction) => format!("{last} (at instruction {instruction})"),
        None => last.to_string(),
    })
}

/// The verifier's closing statistics, which follow the reason.
fn is_statistic(line: &str) -> bool {
    ["processed ", "verification time ", "stack depth ", "max_states_per_insn "].iter().any(|p| line.starts_with(p))
}

/// "45: (db) lock *(u64 *)(r0 +0) += r1": an instruction the verifier walked.
fn is_instruction(line: &str) -> bool {
    line.split_once(": (").is_some_and(|(index, _)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

fn save_log(program: &str, log: &str) -> std::io::Result<PathBuf> {
    let file = tempfile::Builder::new().prefix(&format!("profiler-verifier-{program}-")).suffix(".log").tempfile()?;
    std::fs::write(file.path(), log)?;
    let (_, path) = file.keep().map_err(|e| e.error)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of the log 6.1's verifier wrote when it rejected sys_exit.
    const REJECTED: &str = "func#0 @0
0: R1=ctx(off=0,imm=0) R10=fp0
; let pid_tgid = bpf_get_current_pid_tgid();
0: (85) call bpf_get_current_pid_tgid#14      ; R0_w=scalar()
44: (07) r0 += 8
; atomic_add(unsafe { &raw mut (*histogram).buckets[index] }, 1);
45: (db) lock *(u64 *)(r0 +0) += r1
R0 unbounded memory access, make sure to bounds check any such access
processed 120 insns (limit 1000000) max_states_per_insn 0 total_states 8 peak_states 8 mark_read 4
";

    #[test]
    fn the_reason_comes_from_the_end_of_the_log() {
        assert_eq!(
            reason(REJECTED).unwrap(),
            "R0 unbounded memory access, make sure to bounds check any such access \
             (at instruction 45: (db) lock *(u64 *)(r0 +0) += r1)"
        );
        assert_eq!(
            reason("invalid argument\n\nverification time 12 usec\nstack depth 0\n").unwrap(),
            "invalid argument"
        );
        assert_eq!(reason("processed 0 insns (limit 1000000)\n"), None);
        assert_eq!(reason(""), None);
    }

    #[test]
    fn the_whole_log_is_saved_under_the_programs_name() {
        let path = save_log("sys_exit", REJECTED).unwrap();
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("profiler-verifier-sys_exit-"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), REJECTED);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn permission_errors_are_told_by_errno() {
        assert!(is_permission_error(&std::io::Error::from_raw_os_error(libc::EPERM)));
        assert!(is_permission_error(&std::io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!is_permission_error(&std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
}
