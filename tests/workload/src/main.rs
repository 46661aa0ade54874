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
    /// Exactly N getppid calls and M openat calls that fail with ENOENT, in each of THREADS
    /// threads (thread i pinned to CPU i modulo the CPU count when there are several).
    Syscalls {
        #[arg(long)]
        getppid: u64,
        #[arg(long)]
        fail_open: u64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// THREADS busy threads pinned to one CPU, spinning for SECONDS: they wait for each other in
    /// that CPU's run queue.
    Spin {
        #[arg(long)]
        threads: usize,
        /// The CPU all threads run on; without it, thread i runs on CPU i modulo the CPU count.
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long)]
        seconds: f64,
        /// Sleep this long after every `--busy-us` of work (0: never sleep).
        #[arg(long, default_value_t = 0)]
        sleep_us: u64,
        #[arg(long, default_value_t = 1000)]
        busy_us: u64,
    },
    /// Burns CPU for SECONDS in two named functions, `hot_seventy` and `hot_thirty`, which get 70 %
    /// and 30 % of the time, alternating every 2.1 and 0.9 ms: a cycle that no common sampling
    /// period is a multiple of, so samples cannot alias with it.
    Hot {
        #[arg(long)]
        seconds: f64,
        /// Microseconds in `hot_seventy` per cycle.
        #[arg(long, default_value_t = 2100)]
        seventy_us: u64,
        /// Microseconds in `hot_thirty` per cycle.
        #[arg(long, default_value_t = 900)]
        thirty_us: u64,
    },
    /// Starts CHILDREN processes one after another, each spinning MILLIS ms in `short_lived_spin`
    /// and exiting.
    ShortLived {
        #[arg(long)]
        children: u32,
        #[arg(long)]
        millis: u64,
    },
    /// One short-lived child's work (what `short-lived` runs).
    ShortLivedChild {
        #[arg(long)]
        millis: u64,
    },
    /// A fixed amount of CPU work on THREADS threads (for benchmarks: its run time is the measure).
    Burn {
        #[arg(long)]
        threads: usize,
        /// Millions of loop iterations per thread.
        #[arg(long)]
        millions: u64,
    },
    /// Reads /dev/zero in 1 MiB chunks for SECONDS: most time is spent in the kernel.
    ReadZero {
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
        Workload::Syscalls { getppid, fail_open, threads: 1 } => syscalls(getppid, fail_open),
        Workload::Syscalls { getppid, fail_open, threads } => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let workers: Vec<_> = (0..threads)
                .map(|i| {
                    std::thread::spawn(move || {
                        pin_to(i % cpus);
                        syscalls(getppid, fail_open);
                    })
                })
                .collect();
            for worker in workers {
                worker.join().expect("a syscall thread panicked");
            }
        }
        Workload::Spin { threads, cpu, seconds, sleep_us, busy_us } => spin(
            threads,
            cpu,
            Duration::from_secs_f64(seconds),
            Duration::from_micros(sleep_us),
            Duration::from_micros(busy_us),
        ),
        Workload::Sleep { cpu, count, interval_us } => sleep(cpu, count, Duration::from_micros(interval_us)),
        Workload::Hot { seconds, seventy_us, thirty_us } => {
            hot(Duration::from_secs_f64(seconds), Duration::from_micros(seventy_us), Duration::from_micros(thirty_us));
        }
        Workload::ShortLived { children, millis } => short_lived(children, millis),
        Workload::ShortLivedChild { millis } => short_lived_spin(Duration::from_millis(millis)),
        Workload::ReadZero { seconds } => read_zero(Duration::from_secs_f64(seconds)),
        Workload::Burn { threads, millions } => burn(threads, millions),
    }
}

/// Spins until `end`, checking the clock rarely so that nearly every sample lands in the caller.
/// `seed` makes each caller's code distinct, so the compiler cannot merge identical functions.
#[inline(always)]
fn burn_until(end: Instant, seed: u64) -> u64 {
    let mut x = seed;
    while Instant::now() < end {
        for i in 0..500 {
            x = black_box(x.wrapping_mul(seed).wrapping_add(i));
        }
    }
    x
}

#[inline(never)]
fn hot_seventy(slice: Duration) -> u64 {
    burn_until(Instant::now() + slice, 31)
}

#[inline(never)]
fn hot_thirty(slice: Duration) -> u64 {
    burn_until(Instant::now() + slice, 37)
}

fn hot(duration: Duration, seventy: Duration, thirty: Duration) {
    let end = Instant::now() + duration;
    let mut x = 0;
    while Instant::now() < end {
        x ^= hot_seventy(seventy);
        x ^= hot_thirty(thirty);
    }
    black_box(x);
}

fn short_lived(children: u32, millis: u64) {
    let me = std::env::current_exe().unwrap();
    for _ in 0..children {
        let status = std::process::Command::new(&me)
            .args(["--no-wait", "short-lived-child", "--millis", &millis.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[inline(never)]
fn short_lived_spin(duration: Duration) {
    black_box(burn_until(Instant::now() + duration, 41));
}

fn burn(threads: usize, millions: u64) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut x = t as u64;
                for i in 0..millions * 1_000_000 {
                    x = black_box(x.wrapping_mul(47).wrapping_add(i));
                }
                black_box(x);
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[inline(never)]
fn read_zero(duration: Duration) {
    use std::io::Read as _;
    let mut zero = std::fs::File::open("/dev/zero").unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let end = Instant::now() + duration;
    while Instant::now() < end {
        zero.read_exact(&mut buffer).unwrap();
    }
}

fn syscalls(getppid: u64, fail_open: u64) {
    for _ in 0..getppid {
        // Raw syscalls: libc wrappers may cache or substitute calls.
        // SAFETY: getppid takes no arguments.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    let missing = CString::new("/nonexistent-profiler-test/file").unwrap();
    for _ in 0..fail_open {
        // SAFETY: the path is a live NUL-terminated string; the call fails (ENOENT) and opens nothing.
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, missing.as_ptr(), libc::O_RDONLY) };
        assert_eq!(fd, -1);
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, valid when zeroed; the set outlives the call that reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "cannot pin to CPU {cpu}");
    }
}

fn spin(threads: usize, cpu: Option<usize>, duration: Duration, sleep: Duration, busy: Duration) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::spawn(move || {
                pin_to(cpu.unwrap_or(i % cpus));
                let end = Instant::now() + duration;
                let mut x = 0u64;
                while Instant::now() < end {
                    if sleep.is_zero() {
                        x ^= burn_until(end, 43);
                    } else {
                        x ^= burn_until(Instant::now() + busy, 43);
                        std::thread::sleep(sleep);
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
