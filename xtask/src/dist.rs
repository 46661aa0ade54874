//! `cargo xtask dist`: the static (musl) release binary with its man page and shell completions, in
//! target/dist/profiler-VERSION-x86_64-linux/, a .tar.gz of that folder and its sha256.
//! `cargo xtask dist --check` then runs the binary in a Debian 11 chroot (glibc 2.31), to show that
//! it needs nothing from the distribution it lands on.
//!
//! Facts this rests on, checked on the project's machines (Debian 12, glibc 2.36):
//! - A glibc build asks for GLIBC_2.34 symbols and does not start on Debian 11, Ubuntu 20.04, RHEL 8
//!   or Amazon Linux 2. The `x86_64-unknown-linux-musl` target links everything in: a static-pie
//!   executable, with no PT_INTERP (no dynamic loader) and no DT_NEEDED (no shared library). Both
//!   are checked on every build, with the `object` crate.
//! - The release profile writes no DWARF for the profiler and keeps the symbol table (`.symtab`),
//!   which names the profiler's own functions in its stacks and backtraces. The binary is shipped
//!   as built (9.1 MB, 3.5 MB in the tarball): `strip --strip-debug` would save 34 KB, a full strip
//!   1.7 MB (0.45 MB in the tarball) and lose those names.
//! - `debootstrap --variant=minbase bullseye` makes a Debian 11 root of about 220 MB in about a
//!   minute. It is cached under target/dist-check/; it is made in `bullseye.partial` and renamed
//!   once complete, and anything left mounted under either by a run that was stopped is unmounted
//!   before either is used or removed (removal never crosses into another filesystem).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use object::{
    Endianness,
    elf::{DT_NEEDED, EM_X86_64, FileHeader64, SHT_SYMTAB},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _},
};

use crate::{cargo, install_packages, is_root, status, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// `profiler generate SHELL` and where its output goes in the distribution folder (the man pages:
/// `profiler generate man --dir man`).
const GENERATED: [(&str, &str); 5] = [
    ("bash", "completions/profiler.bash"),
    ("zsh", "completions/_profiler"),
    ("fish", "completions/profiler.fish"),
    ("elvish", "completions/profiler.elv"),
    ("powershell", "completions/_profiler.ps1"),
];
/// Files at the workspace root whose names start so (in any case) go into the distribution.
const LICENSE_PREFIXES: [&str; 4] = ["license", "licence", "copying", "notice"];

/// The old distribution the check runs in: Debian 11, glibc 2.31.
const SUITE: &str = "bullseye";
const SUITE_VERSION: &str = "11";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Written into the chroot when debootstrap has finished, before it is renamed into place.
const COMPLETE: &str = ".xtask-complete";
/// A real recording (CPU stacks, syscalls, run-queue latency), committed with the tests.
const FIXTURE: &str = "tests/fixtures/format-v1.rec";
/// Seconds any one command in the chroot may take.
const COMMAND_TIMEOUT: &str = "120";

#[derive(clap::Args)]
pub struct Args {
    /// Then run the static binary in a Debian 11 (glibc 2.31) chroot, made with debootstrap and
    /// cached under target/dist-check: `report`, `report --json`, `flamegraph`, `--version` on a
    /// committed recording. As root.
    #[arg(long)]
    check: bool,
    /// With --check: check this binary instead of building the distribution, e.g. a glibc build
    /// (target/release/profiler), which must fail.
    #[arg(long, requires = "check", value_name = "PATH")]
    binary: Option<PathBuf>,
}

impl Args {
    /// Build the distribution and check it in the chroot.
    pub fn check() -> Self {
        Args { check: true, binary: None }
    }
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let version = version()?;
    let (binary, dist) = match args.binary {
        Some(binary) => (binary, None),
        None => {
            let dist = build(&version)?;
            (dist.folder.join("profiler"), Some(dist))
        }
    };
    if args.check {
        check(&binary, &version)?;
    }
    if let Some(dist) = dist {
        dist.print();
    }
    eprintln!("xtask: dist: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

struct Dist {
    folder: PathBuf,
    tarball: PathBuf,
    sha256: PathBuf,
}

impl Dist {
    fn print(&self) {
        let size = |path: &Path| fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let binary = self.folder.join("profiler");
        println!("{}/", self.folder.display());
        println!("{}  ({})", binary.display(), megabytes(size(&binary)));
        println!("{}  ({})", self.tarball.display(), megabytes(size(&self.tarball)));
        println!("{}", self.sha256.display());
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The profiler package's version, from its manifest.
fn version() -> Result<String> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(output.status.success(), "cargo metadata failed: {}", output.status);
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("cargo metadata's output")?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "profiler")
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
        .context("cargo metadata lists no profiler package")
}

fn build(version: &str) -> Result<Dist> {
    crate::setup()?;
    add_target()?;
    let started = Instant::now();
    cargo(&["build", "--release", "--target", TARGET, "-p", "profiler"])?;
    eprintln!("xtask: dist: cargo build in {:.1} s", started.elapsed().as_secs_f64());
    let built = workspace_root().join("target").join(TARGET).join("release/profiler");
    let linkage = Linkage::of(&built)?;
    linkage.ensure_static(&built)?;
    ensure!(linkage.symtab, "{} has no symbol table: the distribution keeps it", built.display());

    let name = format!("profiler-{version}-x86_64-linux");
    let dist = workspace_root().join("target/dist");
    let folder = dist.join(&name);
    let partial = dist.join(format!("{name}.partial"));
    remove_dir(&partial)?;
    fs::create_dir_all(partial.join("man"))?;
    fs::create_dir_all(partial.join("completions"))?;
    let binary = partial.join("profiler");
    fs::copy(&built, &binary).with_context(|| format!("cannot copy {}", built.display()))?;
    let pages = Command::new(&binary).args(["generate", "man", "--dir"]).arg(partial.join("man")).status()?;
    ensure!(pages.success(), "`profiler generate man` failed: {pages}");
    ensure!(partial.join("man/profiler-record.1").exists(), "`profiler generate man` wrote no page for record");
    for (what, file) in GENERATED {
        let output = Command::new(&binary)
            .args(["generate", what])
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        ensure!(output.status.success(), "`profiler generate {what}` failed: {}", output.status);
        ensure!(!output.stdout.is_empty(), "`profiler generate {what}` wrote nothing");
        fs::write(partial.join(file), &output.stdout)?;
    }
    let mut extras = vec!["README.md".to_string()];
    for entry in fs::read_dir(workspace_root())? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let lower = file_name.to_ascii_lowercase();
        if entry.file_type()?.is_file() && LICENSE_PREFIXES.iter().any(|p| lower.starts_with(p)) {
            extras.push(file_name);
        }
    }
    if extras.len() == 1 {
        eprintln!("xtask: dist: the repository has no license file to include");
    }
    for file in &extras {
        fs::copy(workspace_root().join(file), partial.join(file)).with_context(|| format!("cannot copy {file}"))?;
    }
    remove_dir(&folder)?;
    fs::rename(&partial, &folder)?;

    let tarball = dist.join(format!("{name}.tar.gz"));
    let sha256 = dist.join(format!("{name}.tar.gz.sha256"));
    let mut tar = Command::new("tar");
    tar.current_dir(&dist).args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"]);
    if let Some(epoch) = source_date_epoch() {
        tar.arg(format!("--mtime=@{epoch}"));
    }
    status(tar.args(["--use-compress-program=gzip -9n", "-cf"]).arg(&tarball).arg(&name))?;
    let output = Command::new("sha256sum")
        .arg(tarball.file_name().unwrap())
        .current_dir(&dist)
        .output()
        .context("cannot run sha256sum")?;
    ensure!(output.status.success(), "sha256sum failed: {}", output.status);
    fs::write(&sha256, &output.stdout)?;
    Ok(Dist { folder, tarball, sha256 })
}

/// The musl target for the toolchain that builds the workspace, added if missing.
fn add_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace_root())
        .output()
        .context("cannot run rustup")?;
    ensure!(installed.status.success(), "rustup target list failed: {}", installed.status);
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == TARGET) {
        eprintln!("xtask: dist: adding the {TARGET} target");
        status(Command::new("rustup").args(["target", "add", TARGET]).current_dir(workspace_root()))?;
    }
    Ok(())
}

/// File times in the tarball: SOURCE_DATE_EPOCH if set, else the last commit's time.
fn source_date_epoch() -> Option<String> {
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        return Some(epoch);
    }
    let output = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let epoch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !epoch.is_empty()).then_some(epoch)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// How an ELF executable is linked.
#[derive(Debug)]
struct Linkage {
    /// The dynamic loader it asks for (PT_INTERP).
    interpreter: Option<String>,
    /// The shared libraries it needs (DT_NEEDED).
    needed: Vec<String>,
    /// Whether it has a symbol table.
    symtab: bool,
}

impl Linkage {
    fn of(path: &Path) -> Result<Linkage> {
        let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Linkage::parse(&data).with_context(|| format!("cannot read {} as an x86-64 ELF file", path.display()))
    }

    fn parse(data: &[u8]) -> Result<Linkage> {
        let header = FileHeader64::<Endianness>::parse(data)?;
        let endian = header.endian()?;
        ensure!(header.e_machine(endian) == EM_X86_64, "not an x86-64 file");
        let mut interpreter = None;
        for segment in header.program_headers(endian, data)? {
            if let Some(path) = segment.interpreter(endian, data)? {
                interpreter = Some(String::from_utf8_lossy(path).into_owned());
            }
        }
        let sections = header.sections(endian, data)?;
        let dynamic = sections.dynamic_table(endian, data)?;
        let mut needed = Vec::new();
        for entry in dynamic.iter().filter(|d| d.tag == DT_NEEDED) {
            needed.push(String::from_utf8_lossy(dynamic.string(entry)?).into_owned());
        }
        let symtab = sections.iter().any(|s| s.sh_type(endian) == SHT_SYMTAB);
        Ok(Linkage { interpreter, needed, symtab })
    }

    fn ensure_static(&self, path: &Path) -> Result<()> {
        if let Some(interpreter) = &self.interpreter {
            bail!("{} is not static: it asks for the dynamic loader {interpreter}", path.display());
        }
        if !self.needed.is_empty() {
            bail!("{} is not static: it needs {}", path.display(), self.needed.join(", "));
        }
        Ok(())
    }
}

/// Runs `binary` in the Debian 11 chroot on the committed recording; fails if any command fails.
fn check(binary: &Path, version: &str) -> Result<()> {
    if !is_root() {
        bail!("the check makes and enters a chroot: run it as root, e.g. `sudo -E cargo xtask dist --check`");
    }
    let linkage = Linkage::of(binary)?;
    let root = chroot()?;
    let run_dir = root.join("check");
    remove_dir(&run_dir)?;
    fs::create_dir_all(&run_dir)?;
    let installed = root.join("usr/local/bin/profiler");
    fs::copy(binary, &installed).with_context(|| format!("cannot copy {} into the chroot", binary.display()))?;
    fs::copy(workspace_root().join(FIXTURE), run_dir.join("format-v1.rec")).context("cannot copy the recording")?;
    let svg = root.join("tmp/x.svg");
    let _ = fs::remove_file(&svg);

    let proc = Mount::proc(&root)?;
    let release = fs::read_to_string(root.join("etc/debian_version")).unwrap_or_default().trim().to_string();
    let glibc = in_chroot(&root, &["ldd", "--version"])
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .and_then(|line| line.rsplit(' ').next().map(|v| format!("glibc {v}")))
        .unwrap_or_else(|| "glibc of unknown version".into());
    let how = match (&linkage.interpreter, linkage.needed.is_empty()) {
        (None, true) => "static".to_string(),
        _ => format!("dynamic: {}", linkage.needed.join(", ")),
    };
    eprintln!(
        "xtask: dist: checking {} ({how}) in Debian {release} ({glibc}), chroot {}",
        binary.display(),
        root.display()
    );

    let recording = "/check/format-v1.rec";
    let mut failures = 0;
    let mut step = |args: &[&str], judge: &dyn Fn(&[u8]) -> Result<String>| {
        let shown = args.join(" ");
        let outcome = in_chroot(&root, args).and_then(|output| {
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                bail!("{}: {}", output.status, stderr.trim());
            }
            judge(&output.stdout)
        });
        match outcome {
            Ok(summary) => eprintln!("  ok    {shown}: {summary}"),
            Err(error) => {
                failures += 1;
                eprintln!("  FAIL  {shown}: {error:#}");
            }
        }
    };
    step(&["profiler", "--version"], &|stdout| {
        let text = String::from_utf8_lossy(stdout).trim().to_string();
        ensure!(text.contains(version), "`{text}` does not name version {version}");
        Ok(text)
    });
    step(&["profiler", "report", recording], &|stdout| {
        let text = String::from_utf8_lossy(stdout);
        ensure!(!text.trim().is_empty(), "no report");
        Ok(format!("{} lines, the first: {}", text.lines().count(), text.lines().next().unwrap_or("").trim()))
    });
    step(&["profiler", "report", recording, "--json"], &|stdout| {
        let json: serde_json::Value = serde_json::from_slice(stdout).context("not JSON")?;
        let keys: Vec<&str> = json.as_object().context("not a JSON object")?.keys().map(String::as_str).collect();
        ensure!(!keys.is_empty(), "an empty JSON object");
        Ok(format!("{} bytes of JSON, keys {}", stdout.len(), keys.join(", ")))
    });
    step(&["profiler", "flamegraph", recording, "-o", "/tmp/x.svg"], &|_| {
        let text = fs::read_to_string(&svg).context("no /tmp/x.svg")?;
        ensure!(text.contains("<svg"), "/tmp/x.svg is no SVG ({} bytes)", text.len());
        ensure!(text.trim_end().ends_with("</svg>"), "/tmp/x.svg does not end with </svg>");
        Ok(format!("/tmp/x.svg, {} bytes, ends with </svg>", text.len()))
    });
    proc.unmount()?;
    // The plain closing line that CI's readers count.
    println!("dist-check: {} passed, {failures} failed", 4 - failures);
    if failures > 0 {
        bail!("{failures} of 4 commands failed in the Debian {release} chroot");
    }
    Ok(())
}

/// `args` run in the chroot, as root, with a small environment and a time limit.
fn in_chroot(root: &Path, args: &[&str]) -> Result<Output> {
    Command::new("timeout")
        .arg(COMMAND_TIMEOUT)
        .arg("chroot")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/root")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run chroot {} {}", root.display(), args.join(" ")))
}

/// The cached Debian 11 root, made with debootstrap if missing or incomplete.
fn chroot() -> Result<PathBuf> {
    let dir = workspace_root().join("target/dist-check");
    fs::create_dir_all(&dir)?;
    let dir = fs::canonicalize(&dir)?;
    let root = dir.join(SUITE);
    let partial = dir.join(format!("{SUITE}.partial"));
    unmount_under(&root)?;
    if !root.join(COMPLETE).exists() {
        remove_tree(&root)?;
        remove_tree(&partial)?;
        install_packages(&["debootstrap"])?;
        let log = dir.join("debootstrap.log");
        eprintln!("xtask: dist: making a Debian {SUITE} chroot with debootstrap (log: {})", log.display());
        let started = Instant::now();
        let result = Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&partial)
            .arg(MIRROR)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::options().append(true).open(&log)?)
            .status()
            .context("cannot run debootstrap");
        // debootstrap mounts /proc and /sys in the new root while it works, and a failure can leave
        // them behind.
        unmount_under(&partial)?;
        if !result?.success() {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("debootstrap failed; the end of {}:\n{}", log.display(), tail.join("\n"));
        }
        fs::write(partial.join(COMPLETE), format!("debootstrap --variant=minbase {SUITE} {MIRROR}\n"))?;
        fs::rename(&partial, &root)?;
        eprintln!("xtask: dist: chroot made in {:.1} s", started.elapsed().as_secs_f64());
    }
    let release = fs::read_to_string(root.join("etc/debian_version")).unwrap_or_default();
    ensure!(
        release.starts_with(&format!("{SUITE_VERSION}.")),
        "{} is not Debian {SUITE_VERSION}: its /etc/debian_version says {:?}",
        root.display(),
        release.trim()
    );
    Ok(root)
}

/// /proc mounted in the chroot, unmounted when dropped (also when a check fails or panics).
struct Mount(Option<PathBuf>);

impl Mount {
    fn proc(root: &Path) -> Result<Mount> {
        let target = root.join("proc");
        fs::create_dir_all(&target)?;
        status(Command::new("mount").args(["-t", "proc", "proc"]).arg(&target))?;
        Ok(Mount(Some(target)))
    }

    fn unmount(mut self) -> Result<()> {
        match self.0.take() {
            Some(target) => unmount(&target),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(target) = self.0.take()
            && let Err(error) = unmount(&target)
        {
            eprintln!("xtask: dist: {error:#}");
        }
    }
}

fn unmount(target: &Path) -> Result<()> {
    if Command::new("umount").arg(target).status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    // Busy (a process of the check still runs in it): detach it now, it goes when unused.
    status(Command::new("umount").arg("--lazy").arg(target))
        .with_context(|| format!("cannot unmount {}", target.display()))
}

/// Unmounts everything mounted at or under `dir`, the deepest first.
fn unmount_under(dir: &Path) -> Result<()> {
    let mut mounts = mounts_under(dir)?;
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mount in mounts {
        eprintln!("xtask: dist: unmounting {}, left by an earlier run", mount.display());
        unmount(&mount)?;
    }
    Ok(())
}

fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let table = fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|path| path.starts_with(dir))
        .collect())
}

/// Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a chroot (or what is left of one): first what is mounted in it, then its files, never
/// crossing into another filesystem.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(dir)?;
    let left = mounts_under(dir)?;
    ensure!(left.is_empty(), "{} still has mounts under it: {left:?}", dir.display());
    eprintln!("xtask: dist: removing {}", dir.display());
    status(Command::new("rm").args(["-rf", "--one-file-system"]).arg(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        // On Debian, /bin/sh is linked against glibc and ldconfig is static-pie.
        let sh = Linkage::of(Path::new("/bin/sh")).unwrap();
        assert!(sh.interpreter.as_deref().is_some_and(|i| i.contains("ld-linux")), "{sh:?}");
        assert!(sh.needed.iter().any(|n| n.starts_with("libc.so")), "{sh:?}");
        assert!(sh.ensure_static(Path::new("/bin/sh")).is_err());
        let ldconfig = Linkage::of(Path::new("/sbin/ldconfig")).unwrap();
        assert!(ldconfig.interpreter.is_none() && ldconfig.needed.is_empty(), "{ldconfig:?}");
        assert!(ldconfig.ensure_static(Path::new("/sbin/ldconfig")).is_ok());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path(r"/trailing\04"), r"/trailing\04");
    }
}
