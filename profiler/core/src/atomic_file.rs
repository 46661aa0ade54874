//! Outputs written whole or not at all, and only where the user meant.
//!
//! A regular file (or a path not there yet) is written to a temporary file in its directory and
//! renamed over it once complete, so an interrupted or failed write never leaves a partial file. A
//! symlink is followed and its target replaced that way. A device, a FIFO or `-` is written
//! through, as a shell's `>` would: `-o /dev/null` must not replace /dev/null with a file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Who may read what is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only the owner (0600): recordings hold command names, paths and stacks, as perf.data does.
    Private,
    /// As the umask allows (0666 & !umask), like any file a shell redirection creates.
    Shared,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Shared => 0o666,
        }
    }
}

/// An output opened before the work that fills it, so that a path that cannot be written fails at
/// once and not after a ten-minute recording.
pub struct Prepared {
    display: PathBuf,
    target: Target,
}

enum Target {
    Replace { path: PathBuf, temporary: tempfile::NamedTempFile },
    Through(File),
    Stdout,
}

/// Opens `path` for writing: a temporary file beside a regular file, the node itself for a device
/// or FIFO, standard output for `-`.
pub fn prepare(path: &Path, access: Access) -> Result<Prepared> {
    let display = path.to_path_buf();
    if path == Path::new("-") {
        return Ok(Prepared { display, target: Target::Stdout });
    }
    // The kernel follows the links itself here, magic ones included (/dev/stdout is
    // /proc/self/fd/1, a link to "pipe:[...]", which no path names).
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => anyhow::bail!("cannot write {}: it is a directory", path.display()),
        Ok(meta) if is_written_through(&meta.file_type()) || names_a_descriptor(path) => {
            // Appending: a descriptor may be a file the shell opened for us (2>>log).
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), plain(&e)))?;
            return Ok(Prepared { display, target: Target::Through(file) });
        }
        _ => {}
    }
    let resolved = resolve_symlinks(path).with_context(|| format!("cannot write {}", path.display()))?;
    let dir = resolved.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    remove_stale_temporaries(&dir);
    let temporary = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .suffix(TEMP_SUFFIX)
        .permissions(fs::Permissions::from_mode(access.mode()))
        .tempfile_in(&dir)
        .map_err(|e| {
            // tempfile's errors hide the OS's: the directory's own error says it plainly.
            let reason = fs::metadata(&dir).err().map_or_else(|| plain(&e), |e| plain(&e));
            anyhow::anyhow!("cannot write in {}: {reason}", dir.display())
        })?;
    Ok(Prepared { display, target: Target::Replace { path: resolved, temporary } })
}

/// Prepares and writes at once, for outputs that take no time to make.
pub fn write(path: &Path, access: Access, content: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    prepare(path, access)?.write(content)
}

impl Prepared {
    /// Writes the content and, for a regular file, renames it into place.
    pub fn write(self, content: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        let context = || format!("cannot write {}", self.display.display());
        match self.target {
            Target::Stdout => fill(&mut io::stdout().lock(), content).with_context(context),
            Target::Through(mut file) => fill(&mut file, content).with_context(context),
            Target::Replace { path, mut temporary } => {
                fill(temporary.as_file_mut(), content).with_context(context)?;
                temporary.as_file().sync_all().with_context(context)?;
                temporary.persist(&path).map_err(|e| anyhow::anyhow!("{}: {}", context(), plain(&e.error)))?;
                Ok(())
            }
        }
    }
}

fn fill(out: &mut dyn Write, content: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let mut out = BufWriter::new(out);
    content(&mut out)?;
    out.flush()?;
    Ok(())
}

const TEMP_PREFIX: &str = ".profiler-";
const TEMP_SUFFIX: &str = ".tmp";

fn is_written_through(kind: &fs::FileType) -> bool {
    kind.is_char_device() || kind.is_block_device() || kind.is_fifo() || kind.is_socket()
}

/// /dev/stdout and its kin name a descriptor of ours, written through whatever file it is.
fn names_a_descriptor(path: &Path) -> bool {
    ["/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"]
        .iter()
        .any(|prefix| path.as_os_str().as_encoded_bytes().starts_with(prefix.as_bytes()))
}

/// Follows symlinks to the node they name, even if it does not exist yet (a dangling link names
/// the file to create). Bounded like the kernel's 40 levels.
fn resolve_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current)?;
                current = match current.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    const ELOOP: i32 = 40;
    Err(io::Error::from_raw_os_error(ELOOP))
}

/// Temporary files of ours whose writer is gone (killed during fsync, say) are removed: the name
/// carries the writer's pid, and a file is only ever removed once that process no longer exists.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(writer_pid) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn writer_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?.strip_suffix(TEMP_SUFFIX)?;
    rest.split_once('-')?.0.parse().ok()
}

/// An I/O error's own words, without the path or source tempfile appends ("Is a directory (os
/// error 21): Is a directory (os error 21)" read twice).
fn plain(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_their_writer() {
        assert_eq!(writer_pid(".profiler-1234-abcDEF.tmp"), Some(1234));
        assert_eq!(writer_pid(".profiler-abc.tmp"), None);
        assert_eq!(writer_pid("profiler-1234-a.tmp"), None);
        assert_eq!(writer_pid(".profiler-1234-a.rec"), None);
    }

    #[test]
    fn missing_directories_fail_in_one_plain_line() {
        let error = prepare(Path::new("/nonexistent-dir/x.rec"), Access::Private).err().unwrap();
        assert_eq!(format!("{error:#}"), "cannot write in /nonexistent-dir: No such file or directory (os error 2)");
    }

    #[test]
    fn regular_files_are_replaced_symlinks_followed_and_stale_temporaries_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.rec");
        fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.rec");
        std::os::unix::fs::symlink("target.rec", &link).unwrap();
        // pid 0 is never a process of ours: its temporary is stale.
        let stale = dir.path().join(".profiler-0-xyz.tmp");
        fs::write(&stale, "partial").unwrap();
        write(&link, Access::Private, |out| Ok(out.write_all(b"new")?)).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!stale.exists());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.svg");
        fs::write(&target, "old").unwrap();
        let result = write(&target, Access::Shared, |_| anyhow::bail!("render failed"));
        assert!(result.is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn devices_are_written_through() {
        write(Path::new("/dev/null"), Access::Private, |out| Ok(out.write_all(b"x")?)).unwrap();
        write(Path::new("/dev/stderr"), Access::Private, |out| Ok(out.write_all(b"")?)).unwrap();
        let meta = fs::metadata("/dev/null").unwrap();
        assert!(meta.file_type().is_char_device());
        let error = prepare(Path::new("/"), Access::Shared).err().unwrap();
        assert_eq!(format!("{error:#}"), "cannot write /: it is a directory");
    }
}
