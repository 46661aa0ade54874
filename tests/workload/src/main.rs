//! Workloads whose truth is known, for the profiler's tests: each waits for a line on stdin (so the
//! test can attach the profiler to its pid first), does exactly what its options say, and exits.

use std::{
    ffi::CString,
    hint::black_box,
    io::BufRead as _,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    /// Start at once instead of waiting for a line on stdin.
    #[arg(long, global = true)]
    no_wait: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Exactly N getppid calls and M openat calls that fail with ENOENT.
    Syscalls {
        #[arg(long)]
        getppid: u64,
        #[arg(long)]
        fail_open: u64,
    },
    /// THREADS busy threads pinned to one CPU, spinning for SECONDS: they wait for each other in
    /// that CPU's run queue.
    Spin {
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        cpu: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Sleeps INTERVAL_US microseconds COUNT times, pinned to CPU: each wakeup finds the CPU idle.
    Sleep {
        #[arg(long)]
        cpu: usize,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        interval_us: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    if !cli.no_wait {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).expect("stdin");
    }
    match cli.workload {
        Workload::Syscalls { getppid, fail_open } => syscalls(getppid, fail_open),
        Workload::Spin { threads, cpu, seconds } => spin(threads, cpu, Duration::from_secs_f64(seconds)),
        Workload::Sleep { cpu, count, interval_us } => sleep(cpu, count, Duration::from_micros(interval_us)),
    }
}

fn syscalls(getppid: u64, fail_open: u64) {
    for _ in 0..getppid {
        // Raw syscalls: libc wrappers may cache or substitute calls.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    let missing = CString::new("/nonexistent-profiler-test/file").unwrap();
    for _ in 0..fail_open {
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, missing.as_ptr(), libc::O_RDONLY) };
        assert_eq!(fd, -1);
    }
}

fn pin_to(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "cannot pin to CPU {cpu}");
    }
}

fn spin(threads: usize, cpu: usize, duration: Duration) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                pin_to(cpu);
                let end = Instant::now() + duration;
                let mut x = 0u64;
                while Instant::now() < end {
                    for i in 0..10_000 {
                        x = black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                black_box(x);
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

fn sleep(cpu: usize, count: u64, interval: Duration) {
    pin_to(cpu);
    for _ in 0..count {
        std::thread::sleep(interval);
    }
}
