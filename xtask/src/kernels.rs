//! `cargo xtask kernels`: boots Debian's own kernels (5.10 from bullseye, 6.1 from bookworm, 6.12
//! from trixie) under qemu with this machine's root filesystem, through virtme-ng, and runs the
//! kernel-dependent integration tests (or any command) inside each.
//!
//! Facts this rests on, checked on the project's machines (Debian 12, a PVM `/dev/kvm`):
//! - The kernels come from Debian's archive only. Their lists are fetched with apt into a private
//!   state directory under target/kernels/apt (its own sources.list, lists and cache), so the
//!   machine's apt configuration and lists stay on bookworm, untouched. `dpkg -x` extracts a
//!   package without installing it: the image is `boot/vmlinuz-RELEASE`, the modules are under
//!   `lib/modules/RELEASE` (Debian builds virtio, 9p and overlayfs as modules; virtme loads them from
//!   there, after `depmod`, which Debian's packages need because they ship no modules.dep).
//! - virtme-ng (PyPI, in a venv: Debian refuses a system-wide pip install) boots a kernel with the
//!   host's root filesystem, read-only under a throwaway overlay, and runs one command as root.
//!   `--rwdir DIR` is the way to get results out. virtiofsd is not in bookworm: use `--force-9p`.
//!   It needs Debian's `qemu-system-x86`, `busybox-static` (its initramfs), `kmod` (depmod) and
//!   `udev` (without it the guest lacks its /dev/virtio-ports links and the command's output and
//!   exit status are lost).
//! - A PVM `/dev/kvm` (module `kvm_pvm`) runs only kernels built for PVM: a stock kernel hangs
//!   right after "Probing EDD". Such machines use software emulation (TCG): about 15-25 s for a
//!   boot plus a trivial command. A real KVM (a writable /dev/kvm without kvm_pvm) is used when
//!   present.
//! - Emulated guests have frozen (qemu at full CPU, nothing more from the guest) with the sched
//!   probe loaded. So every boot has a guest heartbeat, a wall-clock timeout, a console log kept on
//!   disk and, on a freeze, a dump of where each vCPU is (qemu's monitor) before qemu is killed.
//! - A 6.12 guest oopsed on an int3 in `__schedule` as the profiler detached: the kernel patches a
//!   tracepoint's static branch with int3 (text_poke_bp), and under software emulation the other
//!   vCPU ran the int3 unannounced. Such faults, and freezes, get one more boot
//!   (`--freeze-retries`), reported.
//! - In the guest: tracefs and debugfs are mounted, cgroup v2 is at /sys/fs/cgroup, and every
//!   kernel has /sys/kernel/btf/vmlinux.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{status, workspace_root};

/// The tests run in each guest, as (test target, exact test name): each runs alone, as
/// `target/debug/deps/TARGET-HASH --exact --test-threads=1 NAME`. Keep the list short: guests are
/// emulated, and the whole matrix should stay within about 15 minutes.
pub const GUEST_TESTS: &[(&str, &str)] = &[
    ("record", "counts_exactly_the_syscalls_a_process_makes"),
    ("record", "syscall_counts_counts_exactly_and_reports_no_latency"),
    ("record", "syscall_latency_per_process_holds_every_call_at_its_latency"),
    ("pid_max", "threads_sharing_a_slot_lose_a_latency_never_a_count"),
    ("record", "contended_cpu_shows_millisecond_run_queue_waits_and_idle_cpu_does_not"),
    ("record", "sigint_and_sigterm_give_complete_recordings"),
    ("stacks", "hot_functions_get_their_share_and_appear_in_the_flamegraph"),
    ("unwind", "c_without_frame_pointers_has_whole_call_chains_in_their_shares"),
    ("cleanup", "programs_are_gone_after_every_kind_of_exit"),
    // The cgroup filter's walk up the hierarchy, in every probe.
    ("containers", "container_and_pod_filters_record_only_theirs"),
    // `top` loads the changeable pid filter, a variant of every program.
    ("top", "plain_snapshots_when_the_output_is_not_a_terminal"),
    // The switch tail-calls the unwinder from a BTF tracepoint; prev_state comes from the task
    // before 5.18.
    ("offcpu", "blocked_time_in_named_functions_is_each_threads_share_as_offcputime_sees_it"),
    ("offcpu", "fsync_waits_in_uninterruptible_sleep"),
    ("offcpu", "preempted_time_is_not_off_cpu_time"),
];

/// The kernel series, by the Debian release that ships each (its main suite and its security
/// suite, where the newest build usually is).
const SERIES: [(&str, &str); 3] = [("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];

/// Debian packages the runner needs, by package name.
const DEBIAN_PACKAGES: [&str; 5] = ["qemu-system-x86", "busybox-static", "kmod", "udev", "python3-venv"];
/// virtme-ng from PyPI, pinned: this version is known to boot Debian's kernels here.
const VIRTME_NG_VERSION: &str = "1.42";

/// Kernel options added to every boot (`--append` adds more; a later one wins), to make a freeze
/// diagnosable: kernel addresses that the guest's kallsyms, saved at its first boot, resolves
/// (nokaslr), magic SysRq from qemu's monitor, and a soft lockup turned into a panic, which prints
/// every CPU's backtrace to the console log and ends qemu (virtme boots with panic=-1 and
/// -no-reboot).
/// `clocksource=tsc tsc=reliable`: under emulation 5.10 and 6.1 find the TSC unstable and fall back
/// to the HPET, whose every read traps into qemu; workloads that pace themselves by the clock then
/// drift (a freeze soak saw 70/30 shares measured as 63/37).
const KERNEL_OPTIONS: [&str; 6] = [
    "nokaslr",
    "sysrq_always_enabled=1",
    "softlockup_panic=1",
    "softlockup_all_cpu_backtrace=1",
    "clocksource=tsc",
    "tsc=reliable",
];

/// Seconds a test may run in the guest before `timeout` kills it (the guest then goes on).
const TEST_TIMEOUT: u64 = 300;
/// Seconds from qemu's start to the guest's first heartbeat before the boot counts as frozen.
const BOOT_TIMEOUT: u64 = 180;
/// The guest writes a heartbeat every 5 s; none for this many seconds means it froze.
const HEARTBEAT_TIMEOUT: u64 = 60;

#[derive(clap::Parser)]
pub struct Args {
    /// Kernel series to boot (repeatable): 5.10, 6.1, 6.12. Default: all three.
    #[arg(long = "kernel", value_name = "SERIES", value_parser = ["5.10", "6.1", "6.12"])]
    kernels: Vec<String>,
    /// Boot each kernel this many times (a freeze soak test).
    #[arg(long, default_value_t = 1)]
    boots: u32,
    /// A boot whose emulated guest freezes (its heartbeat stops) or oopses on an int3 where the
    /// kernel patches a tracepoint's static branch is booted again, up to this many times (see
    /// `Outcome::emulator_fault`). Each stays in the report, with where the vCPUs were or the
    /// oops, and a boot whose last try failed fails. A soft lockup's panic is not retried.
    #[arg(long, default_value_t = 1, value_name = "N")]
    freeze_retries: u32,
    /// Wall-clock limit for one boot, in seconds (default: 900 for a command, enough for every
    /// test's own limit with the test set). A guest that stops its heartbeat is stopped sooner.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Run these tests instead of the default set, as TARGET:NAME (repeatable), e.g.
    /// `--test record:counts_exactly_the_syscalls_a_process_makes`.
    #[arg(long = "test", value_name = "TARGET:NAME")]
    tests: Vec<String>,
    /// The package whose test binaries are run (for checking this runner with other tests).
    #[arg(long, default_value = "profiler", hide = true)]
    test_package: String,
    /// Look for newer kernel packages in Debian's archive and replace the cached ones.
    #[arg(long)]
    refresh: bool,
    /// Only install the runner and fetch the kernels; boot nothing.
    #[arg(long)]
    prepare: bool,
    /// Boot without the kernel console log (virtme's quiet mode), e.g. to see whether a freeze
    /// depends on the console's output.
    #[arg(long)]
    no_console_log: bool,
    /// Extra kernel options (repeatable).
    #[arg(long, value_name = "OPTION")]
    append: Vec<String>,
    /// Write the support matrix this run proved into README.md (between its support-matrix
    /// markers), besides target/kernels/support-matrix.md.
    #[arg(long)]
    update_readme: bool,
    /// A command to run in each guest, as root, in the workspace, instead of the tests. One word
    /// is a shell script (`-- 'uname -r; ls /sys/kernel/btf'`); several are a command and its
    /// arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

pub mod hold;
mod matrix;

/// The id of the support-matrix recording among a boot's results.
const MATRIX_ID: &str = "matrix::record";

fn kernels_dir() -> PathBuf {
    workspace_root().join("target/kernels")
}

pub fn run(args: &Args) -> Result<()> {
    // One run at a time in a workspace: runs share the cache and the run directories, and two
    // emulated guests on a small machine only slow each other down.
    fs::create_dir_all(kernels_dir())?;
    let lock = fs::File::create(kernels_dir().join("lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("xtask: kernels: waiting for another `cargo xtask kernels` in this workspace to end");
        lock.lock()?;
    }
    let started = Instant::now();
    let vng = install_runner()?;
    eprintln!("xtask: kernels: runner ready in {:.1} s", started.elapsed().as_secs_f64());

    let selected: Vec<(&str, &str)> = if args.kernels.is_empty() {
        SERIES.to_vec()
    } else {
        SERIES.iter().copied().filter(|(name, _)| args.kernels.iter().any(|k| k == name)).collect()
    };
    let fetch_started = Instant::now();
    let kernels = fetch_kernels(&selected, args.refresh)?;
    eprintln!("xtask: kernels: kernels ready in {:.1} s", fetch_started.elapsed().as_secs_f64());
    for kernel in &kernels {
        eprintln!("xtask: kernels: {} = {} {} ({})", kernel.series, kernel.package, kernel.version, kernel.release);
    }
    if args.prepare {
        return Ok(());
    }

    let workload = if args.command.is_empty() {
        Workload::Tests { tests: build_tests(args)?, profiler: matrix_profiler() }
    } else {
        Workload::Command(args.command.clone())
    };
    let timeout = Duration::from_secs(args.timeout.unwrap_or(match &workload {
        Workload::Command(_) => 900,
        Workload::Tests { tests, .. } => BOOT_TIMEOUT + 60 + (TEST_TIMEOUT + 15) * (tests.len() as u64 + 1),
    }));
    let kvm = real_kvm();
    if !kvm {
        eprintln!("xtask: kernels: no usable KVM (PVM or absent): software emulation, guests are slow");
    }
    let options = BootOptions { vng, timeout, kvm, console_log: !args.no_console_log, append: args.append.clone() };

    let mut report = Report { workload: &workload, kvm, kernels: Vec::new() };
    for kernel in &kernels {
        let mut boots = Vec::new();
        for boot in 1..=args.boots {
            eprintln!("xtask: kernels: booting {} ({}), boot {boot}/{}", kernel.series, kernel.release, args.boots);
            let run_dir = kernels_dir().join("runs").join(&kernel.series).join(boot.to_string());
            let mut outcome = boot_once(kernel, &workload, &run_dir, &options)?;
            for retry in 1..=args.freeze_retries {
                if !outcome.emulator_fault() {
                    break;
                }
                eprintln!("xtask: kernels: {} boot {boot}: {}: booting it again", kernel.series, outcome.result);
                boots.push(Outcome { retried: true, ..outcome });
                report.kernels.retain(|(k, _)| k.series != kernel.series);
                report.kernels.push((kernel, boots.clone()));
                report.write()?;
                outcome =
                    boot_once(kernel, &workload, &run_dir.with_file_name(format!("{boot}-again-{retry}")), &options)?;
            }
            eprintln!(
                "xtask: kernels: {} boot {boot}: {} in {:.1} s{}",
                kernel.series,
                outcome.result,
                outcome.seconds,
                if outcome.detail.is_empty() { String::new() } else { format!(" ({})", outcome.detail) }
            );
            if let Workload::Command(_) = workload {
                show_command_output(&run_dir);
            }
            boots.push(outcome);
            report.kernels.retain(|(k, _)| k.series != kernel.series);
            report.kernels.push((kernel, boots.clone()));
            report.write()?;
        }
    }
    report.print_failures();
    report.print();
    if let Workload::Tests { profiler, .. } = &workload {
        matrix::write(&report, profiler, args.update_readme)?;
    }
    let (passed, failed) = report.counts();
    let retried = match report.retried_boots() {
        0 => String::new(),
        n => format!(
            " ({n} boot{} that froze or oopsed under emulation booted again, reported above)",
            if n == 1 { "" } else { "s" }
        ),
    };
    println!("kernels: {passed} passed, {failed} failed{retried}");
    if failed > 0 {
        bail!("{failed} of {} guest runs failed; see target/kernels/results.json", passed + failed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The runner: Debian packages and virtme-ng.

/// Installs what is missing and returns the path of `vng`.
fn install_runner() -> Result<PathBuf> {
    crate::install_packages(&DEBIAN_PACKAGES)?;
    let venv = kernels_dir().join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
    let vng = venv.join("bin/vng");
    let marker = venv.join("installed");
    if !marker.exists() || !vng.exists() {
        eprintln!("xtask: kernels: installing virtme-ng {VIRTME_NG_VERSION} from PyPI into {}", venv.display());
        let _ = fs::remove_dir_all(&venv);
        fs::create_dir_all(kernels_dir())?;
        status(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context("cannot create a Python venv")?;
        status(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
        )
        .with_context(|| format!("cannot install virtme-ng {VIRTME_NG_VERSION} from PyPI"))?;
        fs::write(&marker, VIRTME_NG_VERSION)?;
    }
    Ok(vng)
}

/// A real KVM: /dev/kvm opens for writing and is not PVM's, which cannot boot stock kernels.
fn real_kvm() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists() && fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

// ---------------------------------------------------------------------------------------------
// Kernels from Debian's archive.

struct Kernel {
    series: String,
    package: String,
    version: String,
    /// `uname -r` of the kernel, e.g. 6.1.0-57-amd64.
    release: String,
    root: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.release))
    }

    /// The guest's /proc/kallsyms, saved by its first boot.
    fn kallsyms(&self) -> PathBuf {
        self.root.with_file_name("kallsyms")
    }

    fn from_cache(series: &str) -> Option<Kernel> {
        let dir = kernels_dir().join(series);
        let info: Value = serde_json::from_str(&fs::read_to_string(dir.join("package.json")).ok()?).ok()?;
        let field = |name: &str| info[name].as_str().map(str::to_string);
        let kernel = Kernel {
            series: series.to_string(),
            package: field("package")?,
            version: field("version")?,
            release: field("release")?,
            root: dir.join("root"),
        };
        kernel.vmlinuz().exists().then_some(kernel)
    }
}

/// The cached kernels, fetching those missing (or, with `refresh`, those with a newer package).
fn fetch_kernels(selected: &[(&str, &str)], refresh: bool) -> Result<Vec<Kernel>> {
    let cached: Vec<Option<Kernel>> = selected.iter().map(|(series, _)| Kernel::from_cache(series)).collect();
    if !refresh && cached.iter().all(Option::is_some) {
        return Ok(cached.into_iter().flatten().collect());
    }
    let apt = Apt::new(selected)?;
    let mut kernels = Vec::new();
    for (&(series, codename), cached) in selected.iter().zip(cached) {
        let cached = match cached {
            Some(kernel) if !refresh => {
                kernels.push(kernel);
                continue;
            }
            cached => cached,
        };
        let (package, version) = apt.newest_image(series, codename)?;
        if let Some(kernel) = cached.filter(|k| k.package == package && k.version == version) {
            eprintln!("xtask: kernels: {series}: {package} {version} is the newest, already cached");
            kernels.push(kernel);
            continue;
        }
        kernels.push(apt.fetch(series, &package, &version)?);
    }
    Ok(kernels)
}

/// apt with its own sources, lists and cache under target/kernels/apt: the machine's apt state is
/// neither read for sources nor written.
struct Apt {
    dir: PathBuf,
    /// Every plain kernel image in the lists, as (package, version, suite).
    images: Vec<(String, String, String)>,
}

impl Apt {
    fn new(selected: &[(&str, &str)]) -> Result<Apt> {
        let dir = kernels_dir().join("apt");
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d", "download"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut sources = String::new();
        for (_, codename) in selected {
            sources += &format!("deb [signed-by={keyring}] http://deb.debian.org/debian {codename} main\n");
            sources +=
                &format!("deb [signed-by={keyring}] http://deb.debian.org/debian-security {codename}-security main\n");
        }
        fs::write(dir.join("sources.list"), sources)?;
        let mut apt = Apt { dir, images: Vec::new() };
        let started = Instant::now();
        eprintln!("xtask: kernels: reading Debian's package lists (into {})", apt.dir.display());
        apt.status("apt-get", &["-q", "update"]).context("cannot fetch Debian's package lists")?;
        // One apt-cache call for all series: each one loads every list.
        let names: Vec<String> = apt
            .output("apt-cache", &["pkgnames", "linux-image-"])?
            .lines()
            .filter(|name| selected.iter().any(|(series, _)| is_plain_image(name, &format!("linux-image-{series}."))))
            .map(str::to_string)
            .collect();
        if !names.is_empty() {
            let mut args = vec!["madison"];
            args.extend(names.iter().map(String::as_str));
            for line in apt.output("apt-cache", &args)?.lines() {
                // `linux-image-6.1.0-57-amd64 | 6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages`
                let fields: Vec<&str> = line.split('|').map(str::trim).collect();
                let [name, version, source] = fields[..] else { continue };
                let suite = source.split_whitespace().nth(1).and_then(|s| s.split('/').next()).unwrap_or("");
                if source.ends_with(" amd64 Packages") {
                    apt.images.push((name.to_string(), version.to_string(), suite.to_string()));
                }
            }
        }
        eprintln!("xtask: kernels: package lists in {:.1} s", started.elapsed().as_secs_f64());
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let dir = self.dir.display();
        let mut command = Command::new(program);
        command.args([
            format!("-oDir::Etc::SourceList={dir}/sources.list"),
            format!("-oDir::Etc::SourceParts={dir}/sources.list.d"),
            format!("-oDir::State::Lists={dir}/lists"),
            format!("-oDir::Cache={dir}/cache"),
            "-oAPT::Sandbox::User=root".into(),
            "-oAcquire::Languages=none".into(),
        ]);
        for target in ["DEP-11", "DEP-11-icons", "DEP-11-icons-small", "DEP-11-icons-hidpi"] {
            command.arg(format!("-oAcquire::IndexTargets::deb::{target}::DefaultEnabled=false"));
        }
        command
    }

    fn status(&self, program: &str, args: &[&str]) -> Result<()> {
        status(self.command(program).args(args))
    }

    fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let output = self.command(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The newest `linux-image-SERIES.*-amd64` in the release's own suites (not a backport that
    /// another release carries, not -rt, -cloud, -dbg or -unsigned), as (package, version).
    fn newest_image(&self, series: &str, codename: &str) -> Result<(String, String)> {
        let prefix = format!("linux-image-{series}.");
        let suites = [codename.to_string(), format!("{codename}-security")];
        let mut newest: Option<(String, String)> = None;
        for (name, version, suite) in &self.images {
            if !is_plain_image(name, &prefix) || !suites.contains(suite) {
                continue;
            }
            if newest.as_ref().is_none_or(|(_, best)| version_greater(version, best)) {
                newest = Some((name.clone(), version.clone()));
            }
        }
        newest.with_context(|| format!("Debian's {} lists have no {prefix}*-amd64 package", suites.join(" and ")))
    }

    /// Downloads and extracts one kernel package into target/kernels/SERIES.
    fn fetch(&self, series: &str, package: &str, version: &str) -> Result<Kernel> {
        let started = Instant::now();
        let download = self.dir.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        eprintln!("xtask: kernels: {series}: downloading {package} {version}");
        status(
            self.command("apt-get").args(["-q", "download", &format!("{package}={version}")]).current_dir(&download),
        )
        .with_context(|| format!("cannot download {package} {version}"))?;
        let deb = fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
        let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();
        let deb_size = fs::metadata(&deb)?.len();
        let downloaded = started.elapsed().as_secs_f64();

        let final_dir = kernels_dir().join(series);
        let partial = kernels_dir().join(format!("{series}.partial"));
        let _ = fs::remove_dir_all(&partial);
        let root = partial.join("root");
        fs::create_dir_all(&root)?;
        status(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("cannot extract {deb_name}"))?;
        let release = fs::read_dir(root.join("boot"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
            .next()
            .with_context(|| format!("{deb_name} has no boot/vmlinuz-*"))?;
        // trixie's package puts the modules under usr/lib (merged /usr); depmod and virtme look
        // under lib.
        if !root.join("lib").exists() && root.join("usr/lib/modules").exists() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        // Debian's packages ship no modules.dep; virtme needs it to load virtio, 9p and overlayfs.
        status(Command::new("depmod").arg("-a").arg("-b").arg(&root).arg(&release))
            .with_context(|| format!("depmod failed for {release}"))?;
        let info = json!({
            "series": series,
            "package": package,
            "version": version,
            "release": release,
            "deb": deb_name,
            "deb_bytes": deb_size,
            "source": "deb.debian.org",
        });
        fs::write(partial.join("package.json"), serde_json::to_string_pretty(&info)? + "\n")?;
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&partial, &final_dir)?;
        fs::remove_file(&deb)?;
        eprintln!(
            "xtask: kernels: {series}: {deb_name} ({:.0} MB) downloaded in {downloaded:.1} s, ready in {:.1} s",
            deb_size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        Kernel::from_cache(series).context("the extracted kernel is incomplete")
    }
}

/// `linux-image-6.1.0-57-amd64` or `linux-image-6.12.118+deb13-amd64`, not the -rt, -cloud, -dbg
/// or -unsigned flavours, nor backports named like `linux-image-6.1.0-0.deb11.52-amd64`.
fn is_plain_image(name: &str, prefix: &str) -> bool {
    let Some(middle) = name.strip_prefix(prefix).and_then(|n| n.strip_suffix("-amd64")) else { return false };
    !middle.contains(".deb") && middle.replace("deb", "").chars().all(|c| c.is_ascii_digit() || ".+-".contains(c))
}

/// Debian's version order, from dpkg itself.
fn version_greater(a: &str, b: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", a, "gt", b]).status().is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// What runs in the guest.

enum Workload {
    Command(Vec<String>),
    /// The chosen tests, then a recording with the default probes by `profiler` (the static
    /// release binary when `cargo xtask dist` built one), for the support matrix.
    Tests {
        tests: Vec<GuestTest>,
        profiler: PathBuf,
    },
}

/// The binary whose recording in each guest makes the support matrix: the static release binary
/// users get, when built, else the one the tests run.
fn matrix_profiler() -> PathBuf {
    let release = workspace_root().join("target/x86_64-unknown-linux-musl/release/profiler");
    if release.exists() { release } else { workspace_root().join("target/debug/profiler") }
}

struct GuestTest {
    target: String,
    name: String,
    executable: PathBuf,
}

impl GuestTest {
    fn id(&self) -> String {
        format!("{}::{}", self.target, self.name)
    }
}

/// Builds the test binaries on the host and finds each chosen test's executable.
fn build_tests(args: &Args) -> Result<Vec<GuestTest>> {
    let chosen: Vec<(String, String)> = if args.tests.is_empty() {
        GUEST_TESTS.iter().map(|&(t, n)| (t.to_string(), n.to_string())).collect()
    } else {
        args.tests
            .iter()
            .map(|spec| {
                let (target, name) = spec.split_once(':').with_context(|| format!("--test {spec}: not TARGET:NAME"))?;
                Ok((target.to_string(), name.to_string()))
            })
            .collect::<Result<_>>()?
    };
    if args.test_package == "profiler" {
        crate::setup()?;
        crate::cargo(&["build", "-p", "workload", "-p", "profiler"])?;
    }
    let output = Command::new(env!("CARGO"))
        .args(["test", "-p", &args.test_package, "--no-run", "--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !output.status.success() {
        bail!("cargo test -p {} --no-run failed: {}", args.test_package, output.status);
    }
    let mut executables = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else { continue };
        if message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && let (Some(name), Some(executable)) = (message["target"]["name"].as_str(), message["executable"].as_str())
        {
            executables.insert(name.to_string(), PathBuf::from(executable));
        }
    }
    chosen
        .into_iter()
        .map(|(target, name)| {
            let executable = executables.get(&target).cloned().with_context(|| {
                format!(
                    "package {} has no test target {target} (it has: {})",
                    args.test_package,
                    executables.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            Ok(GuestTest { target, name, executable })
        })
        .collect()
}

fn sh_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The script the guest runs. Everything it reports goes to files in the run directory, the
/// guest's --rwdir: `heartbeat` every 5 s, `release`, `cmdline`, `kallsyms` (a kernel's first boot), `current` (the test running and
/// since when), `tests.tsv` (id, exit status, seconds, one line per test done), `tests/ID.log`,
/// `stdout`/`stderr` (for a command), `dmesg`, and `status` (the exit status) last.
fn guest_script(kernel: &Kernel, workload: &Workload, run_dir: &Path) -> String {
    let r = sh_quote(&run_dir.display().to_string());
    let kallsyms = sh_quote(&kernel.kallsyms().display().to_string());
    let mut script = format!(
        r#"#!/bin/sh
# Written by `cargo xtask kernels`: runs in the guest, as root.
R={r}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
(n=0; while :; do n=$((n + 1)); echo "$n $(cut -d' ' -f1 /proc/uptime)" > "$R/heartbeat"; sleep 5; done) &
HEARTBEAT=$!
uname -r > "$R/release"
cat /proc/cmdline > "$R/cmdline"
# Kernel symbols, once per kernel (nokaslr keeps them where they are), for a freeze's diagnosis.
[ -s {kallsyms} ] || cat /proc/kallsyms > "$R/kallsyms"
"#
    );
    match workload {
        Workload::Command(words) => {
            let command = if words.len() == 1 {
                words[0].clone()
            } else {
                words.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" ")
            };
            fs::write(run_dir.join("command.sh"), command + "\n").expect("write command.sh");
            script += &format!(
                "cd {}\nsh \"$R/command.sh\" > \"$R/stdout\" 2> \"$R/stderr\" < /dev/null\nstatus=$?\n",
                sh_quote(&workspace_root().display().to_string())
            );
        }
        Workload::Tests { tests, profiler } => {
            // cargo runs a package's tests in the package's directory.
            let package_dir = workspace_root().join("profiler");
            let xtask = std::env::current_exe().expect("the running xtask's path");
            script += &format!(
                r#"mkdir -p "$R/tests"
# The probes' tracepoints stay enabled from here to power-off (kernels/hold.rs: emulated int3 patching).
{} hold-tracepoints > "$R/hold.log" 2>&1 &
cd {}
failed=0
run() {{
    echo "$1 $(cut -d' ' -f1 /proc/uptime)" > "$R/current"
    start=$(date +%s)
    timeout -k 10 {TEST_TIMEOUT} "$2" --exact --test-threads=1 "$3" > "$R/tests/$1.log" 2>&1 < /dev/null
    rc=$?
    grep -q '^test result: ok. 1 passed' "$R/tests/$1.log" || {{ [ $rc = 0 ] && rc=200; }}
    [ $rc = 0 ] || failed=$((failed + 1))
    echo "$1	$rc	$(( $(date +%s) - start ))" >> "$R/tests.tsv"
}}
"#,
                sh_quote(&xtask.display().to_string()),
                sh_quote(&package_dir.display().to_string())
            );
            for test in tests {
                script += &format!(
                    "run {} {} {}\n",
                    sh_quote(&test.id()),
                    sh_quote(&test.executable.display().to_string()),
                    sh_quote(&test.name)
                );
            }
            script += &format!(
                r#"echo "{MATRIX_ID} $(cut -d' ' -f1 /proc/uptime)" > "$R/current"
start=$(date +%s)
# Something to record: the profiler leaves itself out, and a guest may be quiet for 3 s.
sh -c 'while :; do ls -l /usr/bin > /dev/null; done' &
busy=$!
{p} record -d 3 -q -o "$R/matrix.rec" > "$R/tests/{MATRIX_ID}.log" 2>&1 && {p} report "$R/matrix.rec" --json > "$R/matrix.json" 2>> "$R/tests/{MATRIX_ID}.log" \
  && {p} record -d 2 -q --probes syscall-counts -o "$R/matrix-counts.rec" >> "$R/tests/{MATRIX_ID}.log" 2>&1 \
  && {p} report "$R/matrix-counts.rec" --json > "$R/matrix-counts.json" 2>> "$R/tests/{MATRIX_ID}.log"
rc=$?
kill $busy
[ $rc = 0 ] || failed=$((failed + 1))
echo "{MATRIX_ID}	$rc	$(( $(date +%s) - start ))" >> "$R/tests.tsv"
"#,
                p = sh_quote(&profiler.display().to_string())
            );
            // The holder is left running: detaching it would patch the branches the tests no
            // longer touch, and power-off does not detach.
            script += "rm -f \"$R/current\"\nstatus=$(( failed > 0 ))\n";
        }
    }
    script += r#"dmesg > "$R/dmesg" 2>&1
kill $HEARTBEAT 2>/dev/null
echo $status > "$R/status"
sync
exit $status
"#;
    script
}

// ---------------------------------------------------------------------------------------------
// Booting.

struct BootOptions {
    vng: PathBuf,
    timeout: Duration,
    kvm: bool,
    console_log: bool,
    append: Vec<String>,
}

#[derive(Clone)]
struct Outcome {
    /// pass, fail, freeze, panic, timeout, lost.
    result: &'static str,
    detail: String,
    seconds: f64,
    guest_release: Option<String>,
    exit_status: Option<i64>,
    /// (id, result, exit status, seconds)
    tests: Vec<(String, String, i64, u64)>,
    run_dir: PathBuf,
    /// An emulator fault after which the same boot was run again: reported, not counted as the kernel's
    /// result.
    retried: bool,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.result == "pass"
    }

    /// A freeze: the heartbeat stopped, or the soft-lockup detector panicked the guest.
    fn froze(&self) -> bool {
        self.result == "freeze" || (self.result == "panic" && self.detail.contains("lockup"))
    }

    /// What emulated guests do that a kernel on hardware or KVM does not, and that a boot again
    /// is fair for: the heartbeat stops with no backtrace after the sysrq keys, or an oops on an
    /// int3 in the middle of kernel code, where the kernel was patching a static branch (a
    /// tracepoint turned on or off as programs attach and detach): qemu's software emulation does
    /// not give the patching CPU's writes to the others in the order the kernel relies on. A soft
    /// lockup's panic is the kernel's own verdict, not retried.
    fn emulator_fault(&self) -> bool {
        let console = || fs::read_to_string(self.run_dir.join("console.log")).unwrap_or_default();
        self.result == "freeze" || (self.result == "panic" && console().contains("Oops: int3:"))
    }
}

fn boot_once(kernel: &Kernel, workload: &Workload, run_dir: &Path, options: &BootOptions) -> Result<Outcome> {
    let _ = fs::remove_dir_all(run_dir);
    fs::create_dir_all(run_dir)?;
    let script = guest_script(kernel, workload, run_dir);
    fs::write(run_dir.join("guest.sh"), &script)?;
    let monitor = std::env::temp_dir().join(format!("xtask-kernels-{}.monitor", std::process::id()));
    let _ = fs::remove_file(&monitor);

    let mut command = Command::new(&options.vng);
    command.arg("-r").arg(kernel.vmlinuz());
    command.args(["--user", "root", "--cpus", "2", "--memory", "2G", "--force-9p"]);
    command.arg("--rwdir").arg(run_dir);
    if !options.kvm {
        command.arg("--disable-kvm");
    }
    if options.console_log {
        command.arg("--verbose");
    }
    for option in KERNEL_OPTIONS.iter().copied().chain(options.append.iter().map(String::as_str)) {
        command.args(["--append", option]);
    }
    command.arg(format!("--qemu-opts=-monitor unix:{},server=on,wait=off", monitor.display()));
    command.arg("--").arg(format!("sh {}", sh_quote(&run_dir.join("guest.sh").display().to_string())));
    command.current_dir(workspace_root()).stdin(Stdio::null());
    // vng runs virtme-run, from its venv, by name.
    let venv_bin = options.vng.parent().expect("vng is in a bin directory");
    command.env("PATH", format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default()));
    // With --verbose the kernel console goes to vng's stderr: console.log survives qemu's death.
    command.stdout(fs::File::create(run_dir.join("vng.stdout"))?);
    command.stderr(fs::File::create(run_dir.join("console.log"))?);
    fs::write(run_dir.join("vng.command"), format!("{command:?}\n"))?;

    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("cannot run {}", options.vng.display()))?;
    let heartbeat_file = run_dir.join("heartbeat");
    let mut last_beat: Option<(String, Instant)> = None;
    let stopped: Option<(&'static str, String)> = loop {
        if let Some(exit) = child.try_wait()? {
            fs::write(run_dir.join("vng.exit"), format!("{exit}\n"))?;
            break None;
        }
        let now = Instant::now();
        if let Ok(beat) = fs::read_to_string(&heartbeat_file)
            && last_beat.as_ref().is_none_or(|(last, _)| *last != beat)
        {
            last_beat = Some((beat, now));
        }
        let elapsed = now - started;
        match &last_beat {
            None if elapsed > Duration::from_secs(BOOT_TIMEOUT) => {
                break Some(("freeze", format!("no heartbeat from the guest within {BOOT_TIMEOUT} s of the start")));
            }
            Some((_, at)) if now - *at > Duration::from_secs(HEARTBEAT_TIMEOUT) => {
                break Some((
                    "freeze",
                    format!("the guest's heartbeat stopped {} s after the start", (*at - started).as_secs()),
                ));
            }
            _ if elapsed > options.timeout => {
                break Some(("timeout", format!("still running after {} s", options.timeout.as_secs())));
            }
            _ => sleep(Duration::from_millis(250)),
        }
    };
    if let Some((_, why)) = &stopped {
        let running = fs::read_to_string(run_dir.join("current")).unwrap_or_default();
        eprintln!("xtask: kernels: {} {why}; running: {}", kernel.series, running.trim());
        // Debian's System.map is a stub: the guest's own /proc/kallsyms stands in.
        let mut symbols = read_symbols(&kernel.kallsyms());
        if symbols.is_empty() {
            symbols = read_symbols(&run_dir.join("kallsyms"));
        }
        let diagnosis = diagnose(&monitor, &symbols);
        fs::write(run_dir.join("freeze.txt"), format!("{why}\nrunning: {running}\n\n{diagnosis}"))?;
        kill_tree(&mut child);
    }
    let _ = fs::remove_file(&monitor);
    let kallsyms = run_dir.join("kallsyms");
    if !kernel.kallsyms().exists() && !read_symbols(&kallsyms).is_empty() {
        fs::rename(&kallsyms, kernel.kallsyms())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(collect(kernel, workload, run_dir, stopped, seconds))
}

/// Reads what the guest left in the run directory.
fn collect(
    kernel: &Kernel,
    workload: &Workload,
    run_dir: &Path,
    stopped: Option<(&'static str, String)>,
    seconds: f64,
) -> Outcome {
    let read = |name: &str| fs::read_to_string(run_dir.join(name)).ok().map(|s| s.trim().to_string());
    let guest_release = read("release");
    let exit_status = read("status").and_then(|s| s.parse::<i64>().ok());
    let mut tests = Vec::new();
    if let Workload::Tests { tests: chosen, .. } = workload {
        let done: BTreeMap<String, (i64, u64)> = read("tests.tsv")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let id = fields.next()?.to_string();
                Some((id, (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?)))
            })
            .collect();
        let current = read("current").and_then(|c| c.split_whitespace().next().map(str::to_string));
        for id in chosen.iter().map(GuestTest::id).chain([MATRIX_ID.to_string()]) {
            let (result, rc, secs) = match done.get(&id) {
                Some(&(0, secs)) => ("pass", 0, secs),
                Some(&(rc @ (124 | 137), secs)) => ("timeout", rc, secs),
                Some(&(200, secs)) => ("no-such-test", 200, secs),
                Some(&(rc, secs)) => ("fail", rc, secs),
                None if current.as_deref() == Some(id.as_str()) => ("interrupted", -1, 0),
                None => ("not-reached", -1, 0),
            };
            tests.push((id, result.to_string(), rc, secs));
        }
    }
    let console = fs::read_to_string(run_dir.join("console.log")).unwrap_or_default();
    let panic = console.lines().find(|l| l.contains("Kernel panic - not syncing")).map(str::trim);
    let (result, detail) = if let Some((result, why)) = stopped {
        (result, why)
    } else if let Some(line) = panic {
        ("panic", line.to_string())
    } else {
        match exit_status {
            Some(0) => ("pass", String::new()),
            Some(rc) if tests.is_empty() => ("fail", format!("exit status {rc}")),
            Some(_) => {
                let failed: Vec<&str> =
                    tests.iter().filter(|t| t.1 != "pass").map(|t| t.0.split("::").last().unwrap_or("")).collect();
                ("fail", format!("failed: {}", failed.join(", ")))
            }
            None => {
                let vng_exit = read("vng.exit").unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(3).collect();
                ("lost", format!("no exit status from the guest (vng: {vng_exit}); console ends: {tail:?}"))
            }
        }
    };
    if guest_release.as_deref().is_some_and(|r| r != kernel.release) {
        return Outcome {
            result: "fail",
            detail: format!("booted {} instead of {}", guest_release.unwrap(), kernel.release),
            seconds,
            guest_release: None,
            exit_status,
            tests,
            run_dir: run_dir.to_path_buf(),
            retried: false,
        };
    }
    Outcome {
        result,
        detail,
        seconds,
        guest_release,
        exit_status,
        tests,
        run_dir: run_dir.to_path_buf(),
        retried: false,
    }
}

/// Asks qemu's monitor where each vCPU is, twice (moving or stuck), with kernel symbols, and makes
/// the guest print its CPUs' and blocked tasks' backtraces to the console (magic SysRq l and w),
/// which only a guest whose interrupts still run can do.
fn diagnose(monitor: &Path, symbols: &[(u64, String)]) -> String {
    let mut out = String::new();
    let mut stream = match UnixStream::connect(monitor) {
        Ok(stream) => stream,
        Err(error) => return format!("qemu's monitor at {}: {error}\n", monitor.display()),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut talk = |command: &str, wait: Duration| -> String {
        if !command.is_empty() {
            let _ = stream.write_all(format!("{command}\n").as_bytes());
        }
        let deadline = Instant::now() + wait;
        let mut text = Vec::new();
        let mut buffer = vec![0u8; 65536];
        while Instant::now() < deadline {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    text.extend_from_slice(&buffer[..n]);
                    if text.ends_with(b"(qemu) ") {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        // Drop the monitor's echo of the command (line editing escapes) and its prompts.
        let text = String::from_utf8_lossy(&text).replace('\r', "");
        text.lines()
            .filter(|line| !line.contains('\x1b') && line.trim() != "(qemu)")
            .map(|line| format!("{line}\n"))
            .collect::<String>()
    };
    talk("", Duration::from_secs(2));
    for (round, command) in ["info status", "info registers -a", "info registers -a"].iter().enumerate() {
        if round == 2 {
            sleep(Duration::from_secs(1));
        }
        let text = talk(command, Duration::from_secs(5));
        out += &format!("== (qemu) {command}\n{text}\n");
        if command.starts_with("info registers") {
            for rip in text.split("RIP=").skip(1).filter_map(|s| s.get(..16)) {
                if let Ok(address) = u64::from_str_radix(rip, 16) {
                    out += &format!("   RIP {rip} = {}\n", symbolize(symbols, address));
                }
            }
        }
    }
    for key in ["alt-sysrq-l", "alt-sysrq-w"] {
        out += &format!("== (qemu) sendkey {key}\n{}\n", talk(&format!("sendkey {key}"), Duration::from_secs(1)));
        sleep(Duration::from_secs(4));
    }
    out += "(any backtraces the guest printed are at the end of console.log)\n";
    out
}

/// `ADDRESS TYPE NAME [MODULE]` lines (kallsyms), sorted by address, without the zero addresses
/// that a reader without CAP_SYSLOG gets.
fn read_symbols(path: &Path) -> Vec<(u64, String)> {
    let mut symbols: Vec<(u64, String)> = fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let _kind = fields.next()?;
            let name = fields.next()?;
            let module = fields.next().map(|m| format!(" {m}")).unwrap_or_default();
            (address != 0).then(|| (address, format!("{name}{module}")))
        })
        .collect();
    symbols.sort();
    symbols
}

fn symbolize(symbols: &[(u64, String)], address: u64) -> String {
    if address < 0x8000_0000_0000_0000 {
        return "(user space)".to_string();
    }
    match symbols.partition_point(|(a, _)| *a <= address) {
        0 => "(no kernel symbols)".to_string(),
        i => format!("{}+{:#x}", symbols[i - 1].1, address - symbols[i - 1].0),
    }
}

/// Kills vng and every process under it (qemu), by their ids.
fn kill_tree(child: &mut Child) {
    let mut pids = vec![child.id()];
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name, in parentheses, may hold spaces: the ppid is the second field after it.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        pids.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    let _ = Command::new("kill").arg("-KILL").args(pids.iter().map(u32::to_string)).status();
    let _ = child.wait();
}

fn show_command_output(run_dir: &Path) {
    for (name, label) in [("stdout", "stdout"), ("stderr", "stderr")] {
        if let Ok(text) = fs::read_to_string(run_dir.join(name))
            && !text.is_empty()
        {
            eprintln!("---- guest {label} ----");
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report<'a> {
    workload: &'a Workload,
    kvm: bool,
    kernels: Vec<(&'a Kernel, Vec<Outcome>)>,
}

impl Report<'_> {
    /// Boots passed and failed, leaving out the freezes that were booted again.
    fn counts(&self) -> (usize, usize) {
        let boots = self.kernels.iter().flat_map(|(_, boots)| boots).filter(|b| !b.retried);
        let passed = boots.clone().filter(|b| b.passed()).count();
        (passed, boots.count() - passed)
    }

    fn retried_boots(&self) -> usize {
        self.kernels.iter().flat_map(|(_, boots)| boots).filter(|b| b.retried).count()
    }

    fn write(&self) -> Result<()> {
        let kernels: Vec<Value> = self
            .kernels
            .iter()
            .map(|(kernel, boots)| {
                json!({
                    "series": kernel.series,
                    "package": kernel.package,
                    "version": kernel.version,
                    "release": kernel.release,
                    "passed": boots.iter().filter(|b| !b.retried).all(Outcome::passed),
                    "froze": boots.iter().any(Outcome::froze),
                    "boots": boots.iter().enumerate().map(|(i, b)| json!({
                        "boot": i + 1,
                        "result": b.result,
                        "detail": b.detail,
                        "freeze": b.froze(),
                        "booted_again": b.retried,
                        "seconds": (b.seconds * 10.0).round() / 10.0,
                        "guest_release": b.guest_release,
                        "exit_status": b.exit_status,
                        "run_dir": b.run_dir,
                        "tests": b.tests.iter().map(|(id, result, rc, secs)| json!({
                            "test": id, "result": result, "exit_status": rc, "seconds": secs,
                            "log": b.run_dir.join("tests").join(format!("{id}.log")),
                        })).collect::<Vec<_>>(),
                        "console_log": b.run_dir.join("console.log"),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let workload = match self.workload {
            Workload::Command(words) => json!({ "command": words }),
            Workload::Tests { tests, .. } => json!({ "tests": tests.iter().map(GuestTest::id).collect::<Vec<_>>() }),
        };
        let (passed, failed) = self.counts();
        let report = json!({
            "workload": workload,
            "accelerator": if self.kvm { "kvm" } else { "tcg" },
            "passed": passed,
            "failed": failed,
            "kernels": kernels,
        });
        let path = kernels_dir().join("results.json");
        fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The end of each failed test's log, and of the console log of each boot that froze,
    /// panicked or lost its results, so that CI's output tells why.
    fn print_failures(&self) {
        let tail = |path: &Path, lines: usize| {
            let text = fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        for (kernel, boots) in &self.kernels {
            for (i, boot) in boots.iter().enumerate() {
                for (id, result, _, _) in boot.tests.iter().filter(|t| t.1 != "pass" && t.1 != "not-reached") {
                    let log = boot.run_dir.join("tests").join(format!("{id}.log"));
                    println!("---- {id}: {result} on {} (boot {}), from {} ----", kernel.series, i + 1, log.display());
                    // libtest's report of the failure (the test's output and its panic), else the end.
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    match text.split_once("\nfailures:\n") {
                        Some((_, report)) => println!("{}", report.lines().take(80).collect::<Vec<_>>().join("\n")),
                        None => println!("{}", tail(&log, 40)),
                    }
                }
                if matches!(boot.result, "freeze" | "panic" | "lost" | "timeout") {
                    let console = boot.run_dir.join("console.log");
                    println!(
                        "---- {} on {} (boot {}), end of {} ----",
                        boot.result,
                        kernel.series,
                        i + 1,
                        console.display()
                    );
                    println!("{}", tail(&console, 40));
                    let freeze = boot.run_dir.join("freeze.txt");
                    if freeze.exists() {
                        // The vCPUs' instruction pointers, named: what CI's output needs to tell
                        // a guest stuck in the kernel from one qemu stopped running.
                        let text = fs::read_to_string(&freeze).unwrap_or_default();
                        let status = text.lines().skip_while(|l| !l.contains("info status")).nth(1).unwrap_or("");
                        println!("qemu: {}", status.trim());
                        for line in text.lines().filter(|l| l.trim_start().starts_with("RIP ")) {
                            println!("{line}");
                        }
                        println!("(the whole dump: {})", freeze.display());
                    }
                }
            }
        }
    }

    fn print(&self) {
        println!();
        println!("{:<6} {:<22} {:>5}  {:<8} {:>8}  detail", "kernel", "release", "boot", "result", "seconds");
        for (kernel, boots) in &self.kernels {
            for (i, boot) in boots.iter().enumerate() {
                println!(
                    "{:<6} {:<22} {:>5}  {:<8} {:>8.1}  {}",
                    kernel.series,
                    kernel.release,
                    format!("{}/{}", i + 1, boots.len()),
                    boot.result,
                    boot.seconds,
                    boot.detail
                );
                for (id, result, _, secs) in &boot.tests {
                    println!("{:<6} {:<22} {:>5}    {:<8} {:>6}  {id}", "", "", "", result, secs);
                }
            }
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_images_only() {
        for name in ["linux-image-6.1.0-57-amd64", "linux-image-6.12.118+deb13-amd64", "linux-image-5.10.0-46-amd64"] {
            let series = name.split('-').nth(2).unwrap().rsplitn(2, '.').last().unwrap();
            let series = if series.starts_with("6.12") {
                "6.12"
            } else if series.starts_with("6.1") {
                "6.1"
            } else {
                "5.10"
            };
            assert!(is_plain_image(name, &format!("linux-image-{series}.")), "{name}");
        }
        for name in [
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-dbg",
            "linux-image-6.1.0-0.deb11.52-amd64",
        ] {
            assert!(!is_plain_image(name, "linux-image-6.1."), "{name}");
        }
        assert!(!is_plain_image("linux-image-6.12.118+deb13-amd64", "linux-image-6.1."));
    }

    #[test]
    fn symbols_resolve() {
        let symbols = vec![(0xffffffff81000000, "_text".to_string()), (0xffffffff81000100, "do_idle".to_string())];
        assert_eq!(symbolize(&symbols, 0xffffffff81000110), "do_idle+0x10");
        assert!(symbolize(&symbols, 0x401000).starts_with("(user space"));
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a/b-c"), "a/b-c");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    /// Passes trivially: the test that `--test-package xtask --test xtask:kernels::tests::guest_probe`
    /// runs in a guest to check the runner without the profiler.
    #[test]
    fn guest_probe() {
        println!("kernel {}", fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());
    }

    /// Fails when asked to: checks that a failing test is reported as failing.
    #[test]
    fn guest_probe_fails_in_a_guest() {
        assert!(
            !Path::new("/proc/cmdline").exists() || !fs::read_to_string("/proc/cmdline").unwrap().contains("virtme")
        );
    }
}
