//! Project tasks: `cargo xtask setup | build | demo | bench | test | kernels | dist`. Each installs
//! only what is missing, so every command works on a fresh machine and is quick on a prepared one.

mod dist;
mod kernels;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set up, build, demo and test the profiler")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF side needs (rust-src, LLVM 22, bpf-linker) and what the tests
    /// run against (Prometheus, promtool, Go's pprof), if missing.
    Setup,
    /// Set up, then build the profiler (release).
    Build,
    /// Set up, build, and record the whole machine for a few seconds, ending in a summary and a
    /// flamegraph (demo.rec, demo.svg).
    Demo {
        /// Seconds to record.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Install the peer tools and run the benchmarks (overhead against libbpf-tools, bpftrace and
    /// perf, recorder cost, analysis speed, unwinding, micro-benchmarks); writes benches/results/RESULTS.md.
    Bench {
        /// Arguments for the benchmark runner, e.g. `overhead --pairs 9`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test (as root: the tests load eBPF programs): on this machine's
    /// kernel, then the static binary in a Debian 11 chroot (`dist --check`), then the
    /// kernel-dependent tests in Debian's 5.10, 6.1 and 6.12 kernels (`kernels`).
    Test {
        /// Only the tests on this machine's kernel (minutes, not half an hour).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian's kernels (5.10, 6.1, 6.12) under qemu with this machine's filesystem and run
    /// the kernel-dependent integration tests, or a command, in each; writes
    /// target/kernels/results.json.
    Kernels(kernels::Args),
    /// Set up, build the static (musl) release binary and write
    /// target/dist/profiler-VERSION-x86_64-linux/ (binary, man page, shell completions, README), its
    /// .tar.gz and sha256; `--check` then runs it in a Debian 11 chroot (glibc 2.31).
    Dist(dist::Args),
    /// Inside an emulated guest: hold the probes' tracepoints enabled until killed (see
    /// xtask/src/kernels/hold.rs).
    #[command(hide = true)]
    HoldTracepoints,
}

/// Versions that build here (Debian 12, rustup with stable 1.95 and a nightly, both on LLVM 22):
/// bpf-linker 0.13.0 with its `llvm-22` feature (its default wants LLVM 23), linked against
/// Debian's llvm-22-dev. Rust's LLVM and bpf-linker's must match: a rustup update of the nightly
/// toolchain that moves its LLVM needs a matching bpf-linker feature.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: u32 = 22;

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            cargo(&["build", "--release", "-p", "profiler"])
        }
        Task::Demo { seconds } => {
            setup()?;
            cargo(&["build", "--release", "-p", "profiler"])?;
            let profiler = workspace_root().join("target/release/profiler");
            let output = workspace_root().join("demo.rec");
            let svg = workspace_root().join("demo.svg");
            let mut command = as_root(profiler.to_str().unwrap());
            command.args(["record", "-d", &seconds.to_string(), "-o", output.to_str().unwrap()]);
            command.args(["--flamegraph", svg.to_str().unwrap()]);
            status(&mut command)
        }
        Task::Bench { args } => {
            setup()?;
            install_packages(&BENCH_PACKAGES)?;
            if !on_path("inferno-flamegraph") {
                eprintln!("xtask: installing inferno (for the analysis-speed comparison)");
                status(Command::new("cargo").args(["install", "inferno", "--locked"]))?;
            }
            cargo(&["build", "--release", "-p", "profiler", "-p", "workload", "-p", "benches"])?;
            let runner = workspace_root().join("target/release/benches");
            let mut command = as_root(runner.to_str().unwrap());
            command.current_dir(workspace_root()).args(&args);
            match bcc_kernel_source() {
                Ok(tree) => {
                    command.env("BCC_KERNEL_SOURCE", tree);
                }
                Err(error) => eprintln!("xtask: bcc's tools will be skipped, they have no kernel headers: {error:#}"),
            }
            status(&mut command)?;
            if args.is_empty() {
                cargo(&["bench", "-p", "benches", "--bench", "micro"])?;
            }
            Ok(())
        }
        Task::Test { host_only, args } => {
            setup()?;
            if !is_root() {
                bail!("the tests load eBPF programs: run them as root, e.g. `sudo -E cargo xtask test`");
            }
            cargo(&["build", "-p", "workload", "-p", "profiler"])?;
            let mut test_args =
                vec!["test", "-p", "profiler-common", "-p", "profiler-core", "-p", "profiler", "-p", "xtask"];
            test_args.extend(["--", "--test-threads=1"]);
            test_args.extend(args.iter().map(String::as_str));
            cargo(&test_args)?;
            if host_only {
                return Ok(());
            }
            // The static binary first: the kernel guests record with it for the support matrix.
            dist::run(dist::Args::check())?;
            kernels::run(&kernels::Args::parse_from(["kernels"]))
        }
        Task::Kernels(args) => kernels::run(&args),
        Task::Dist(args) => dist::run(args),
        Task::HoldTracepoints => match kernels::hold::run()? {},
    }
}

/// Debian packages the tests use: real peers (Prometheus, Go's pprof, strace, libbpf-tools'
/// offcputime), a real debuginfod server, and what the unwinding tests build and strip their
/// workloads with; libc6-dbg names libc's local functions (`__libc_start_call_main`), as on a
/// developer's machine; tmux is the real terminal `top` is tested in; e2fsprogs makes the
/// filesystem whose fsyncs the off-CPU tests wait on.
const TEST_PACKAGES: [&str; 10] = [
    "prometheus",
    "golang-go",
    "strace",
    "debuginfod",
    "libc6-dbg",
    "gcc",
    "binutils",
    "tmux",
    "libbpf-tools",
    "e2fsprogs",
];
/// Debian packages the benchmarks compare against (and the terminal `top` is measured in).
const BENCH_PACKAGES: [&str; 5] = ["linux-perf", "bpftrace", "libbpf-tools", "bpfcc-tools", "tmux"];

fn setup() -> Result<()> {
    if !output_of("rustup", &["toolchain", "list"])?.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly Rust toolchain: the eBPF programs build with `rustup run nightly cargo build -Z build-std=core \
             --target bpfel-unknown-none`, and that nightly's LLVM must be {LLVM_MAJOR}, like bpf-linker's"
        );
    }
    if !output_of("rustup", &["component", "list", "--installed", "--toolchain", "nightly"])?
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask: installing rust-src for the nightly toolchain");
        status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker_ok = output_of("bpf-linker", &["--version"]).is_ok_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        let llvm = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"));
        install_packages(&[&format!("llvm-{LLVM_MAJOR}-dev")])?;
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION}");
        status(
            Command::new("cargo")
                .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--no-default-features"])
                .args(["--features", &format!("llvm-{LLVM_MAJOR}")])
                .env("LLVM_PREFIX", &llvm),
        )
        .context("cannot install bpf-linker")?;
    }
    install_packages(&TEST_PACKAGES)
}

/// Kernel headers for bcc, which compiles its programs against them at start. This kernel ships
/// none, so bcc gets Debian's (6.1): fine for the tools that read no kernel struct (profile,
/// syscount). Debian splits them in two directories and BCC_KERNEL_SOURCE takes one, so they are
/// merged into a tree of symlinks under target/.
fn bcc_kernel_source() -> Result<PathBuf> {
    const META: &str = "linux-headers-amd64";
    install_packages(&[META])?;
    let depends = output_of("dpkg-query", &["-W", "-f=${Depends}", META])?;
    let headers = depends
        .split([',', ' '])
        .find(|word| word.starts_with("linux-headers-"))
        .with_context(|| format!("{META} depends on no headers package: {depends}"))?
        .to_string();
    let common = format!("{}-common", headers.trim_end_matches("-amd64"));
    let tree = workspace_root().join("target/bcc-kernel-source").join(&headers);
    if !tree.exists() {
        let partial = tree.with_file_name(format!("{headers}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        for (source, overwrite) in [(common, "-rs"), (headers, "-rsf")] {
            status(Command::new("cp").arg(overwrite).arg(format!("/usr/src/{source}/.")).arg(&partial))?;
        }
        std::fs::rename(&partial, &tree)?;
    }
    Ok(tree)
}

/// Installs the Debian packages that are not installed.
fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|package| !dpkg_installed(package)).collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(", "));
        status(as_root("apt-get").args(["update", "-qq"]))?;
        status(
            as_root("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("cannot install {}", missing.join(", ")))?;
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn on_path(command: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {command}")]).output().is_ok_and(|o| o.status.success())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn is_root() -> bool {
    output_of("id", &["-u"]).is_ok_and(|uid| uid.trim() == "0")
}

/// A command that runs as root: directly when we are root, through sudo otherwise.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg(program);
        command
    }
}

fn cargo(args: &[&str]) -> Result<()> {
    status(Command::new(env!("CARGO")).args(args).current_dir(workspace_root()))
}

fn status(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn output_of(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
