//! Snapshots of processes' executable mappings, taken while they live, so that their user
//! addresses can be turned into (file, file offset) after they exit. The files themselves are
//! opened through /proc/PID/map_files at snapshot time and kept open: that reaches files in other
//! mount namespaces (containers) and files deleted since, for as long as we symbolize.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// One executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The path /proc/PID/maps shows; empty for anonymous memory, `[vdso]` and the like in brackets.
    pub path: String,
    /// Key into the open files, for file-backed mappings we could open.
    pub file: Option<FileKey>,
}

/// Identity of a mapped file: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub device: u64,
    pub inode: u64,
}

/// The key of the kernel's vDSO, which has no file: every process of a kernel maps the same image,
/// so we symbolize against a copy of our own.
pub const VDSO: FileKey = FileKey { device: u64::MAX, inode: u64::MAX };
const VDSO_PATH: &str = "[vdso]";

/// Parses one line of /proc/PID/maps, keeping executable mappings only.
pub fn parse_line(line: &str) -> Option<(Mapping, Option<FileKey>)> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let device = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    // The path may contain spaces; it is the rest of the line.
    let path = fields.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = device.split_once(':')?;
    let device = (u64::from_str_radix(major, 16).ok()? << 20) | u64::from_str_radix(minor, 16).ok()?;
    let key = if path == VDSO_PATH { Some(VDSO) } else { (inode != 0).then_some(FileKey { device, inode }) };
    let mapping = Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path,
        file: key,
    };
    Some((mapping, key))
}

/// A file kept open for symbolization.
pub struct OpenFile {
    file: File,
    pub path: String,
}

impl OpenFile {
    /// A path through which blazesym can open the file, whatever namespace it lives in.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// What a refresh found.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub changed: Vec<u32>,
    pub gone: Vec<u32>,
}

/// Every process's snapshots (newest last) and the files they map.
#[derive(Default)]
pub struct MapsCache {
    snapshots: HashMap<u32, Vec<Vec<Mapping>>>,
    files: HashMap<FileKey, OpenFile>,
}

impl MapsCache {
    /// Reads the process's maps now, if it still exists, and opens files not yet open. A new
    /// snapshot is kept only if the maps changed; returns whether they did.
    pub fn snapshot(&mut self, tgid: u32) -> io::Result<bool> {
        let text = std::fs::read_to_string(format!("/proc/{tgid}/maps"))?;
        let mut mappings = Vec::new();
        for (mapping, key) in text.lines().filter_map(parse_line) {
            if key == Some(VDSO) && !self.files.contains_key(&VDSO) {
                if let Ok(file) = copy_own_vdso() {
                    self.files.insert(VDSO, OpenFile { file, path: VDSO_PATH.into() });
                }
            } else if let Some(key) = key
                && !self.files.contains_key(&key)
            {
                let map_file = format!("/proc/{tgid}/map_files/{:x}-{:x}", mapping.start, mapping.end);
                let root_path = format!("/proc/{tgid}/root{}", mapping.path);
                if let Ok(file) = File::open(&map_file).or_else(|_| File::open(&root_path)) {
                    self.files.insert(key, OpenFile { file, path: mapping.path.clone() });
                }
            }
            mappings.push(mapping);
        }
        let history = self.snapshots.entry(tgid).or_default();
        let changed = history.last() != Some(&mappings);
        if changed {
            history.push(mappings);
        }
        Ok(changed)
    }

    /// The process's newest snapshot.
    pub fn latest(&self, tgid: u32) -> Option<&[Mapping]> {
        self.snapshots.get(&tgid)?.last().map(Vec::as_slice)
    }

    /// Takes a new snapshot of each `active` process (mappings change: dlopen, JIT), and checks
    /// that the others still live; returns the ones whose mappings changed, and the ones that are
    /// gone. Reading a process's maps costs the kernel tens of microseconds: on a machine of
    /// hundreds of processes, most of them asleep, reading only those being sampled is most of
    /// the recorder's CPU time saved.
    pub fn refresh(&mut self, active: &HashSet<u32>) -> Refreshed {
        let mut refreshed = Refreshed::default();
        let tgids: Vec<u32> = self.snapshots.keys().copied().collect();
        for tgid in tgids {
            if !active.contains(&tgid) {
                if !Path::new(&format!("/proc/{tgid}")).exists() {
                    refreshed.gone.push(tgid);
                }
                continue;
            }
            match self.snapshot(tgid) {
                Ok(true) => refreshed.changed.push(tgid),
                Ok(false) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => refreshed.gone.push(tgid),
                Err(_) => {}
            }
        }
        refreshed
    }

    /// Forgets processes (once their last samples are named), and closes the files that no process
    /// left maps: memory and open files follow the processes alive, not all that ever ran.
    pub fn forget(&mut self, tgids: &[u32]) {
        if tgids.is_empty() {
            return;
        }
        for tgid in tgids {
            self.snapshots.remove(tgid);
        }
        let mapped: HashSet<FileKey> =
            self.snapshots.values().flatten().flatten().filter_map(|mapping| mapping.file).collect();
        self.files.retain(|key, _| *key == VDSO || mapped.contains(key));
    }

    pub fn knows(&self, tgid: u32) -> bool {
        self.snapshots.contains_key(&tgid)
    }

    /// The mapping that held `addr` in process `tgid`, newest snapshot first.
    pub fn find(&self, tgid: u32, addr: u64) -> Option<&Mapping> {
        self.snapshots
            .get(&tgid)?
            .iter()
            .rev()
            .find_map(|mappings| mappings.iter().find(|m| (m.start..m.end).contains(&addr)))
    }

    pub fn file(&self, key: &FileKey) -> Option<&OpenFile> {
        self.files.get(key)
    }
}

/// Copies this process's vDSO image (an ELF object the kernel maps into every process) into an
/// unnamed temporary file.
fn copy_own_vdso() -> io::Result<File> {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let (mapping, _) = maps
        .lines()
        .filter_map(parse_line)
        .find(|(m, _)| m.path == VDSO_PATH)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no vDSO mapped"))?;
    let mut mem = File::open("/proc/self/mem")?;
    mem.seek(SeekFrom::Start(mapping.start))?;
    let mut image = vec![0u8; (mapping.end - mapping.start) as usize];
    mem.read_exact(&mut image)?;
    let mut file = tempfile::tempfile()?;
    file.write_all(&image)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_mappings_only() {
        let (m, key) = parse_line("55d4c8a00000-55d4c8a9a000 r-xp 00028000 fd:01 1837 /usr/bin/my prog").unwrap();
        assert_eq!((m.start, m.end, m.file_offset), (0x55d4c8a00000, 0x55d4c8a9a000, 0x28000));
        assert_eq!(m.path, "/usr/bin/my prog");
        assert_eq!(key, Some(FileKey { device: (0xfd << 20) | 1, inode: 1837 }));
        assert!(parse_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]").is_none());
        let (vdso, key) = parse_line("7ffd3000-7ffd5000 r-xp 00000000 00:00 0                  [vdso]").unwrap();
        assert_eq!((vdso.path.as_str(), key), ("[vdso]", Some(VDSO)));
        let (anon, _) = parse_line("7f0000000000-7f0000100000 r-xp 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, "");
    }

    #[test]
    fn forgotten_processes_close_their_files() {
        let mut cache = MapsCache::default();
        let me = std::process::id();
        cache.snapshot(me).unwrap();
        assert!(cache.files.len() > 1);
        assert!(cache.refresh(&HashSet::new()).gone.is_empty(), "this process lives");
        cache.forget(&[me]);
        assert!(!cache.knows(me));
        assert_eq!(cache.files.keys().collect::<Vec<_>>(), [&VDSO], "only the vDSO copy stays");
    }

    #[test]
    fn snapshots_this_process_and_finds_its_code() {
        let mut cache = MapsCache::default();
        cache.snapshot(std::process::id()).unwrap();
        let addr = parses_executable_mappings_only as fn() as usize as u64;
        let mapping = cache.find(std::process::id(), addr).expect("our own code is mapped");
        assert!(mapping.path.starts_with('/'));
        let file = cache.file(mapping.file.as_ref().unwrap()).expect("opened");
        assert!(std::fs::metadata(file.fd_path()).unwrap().len() > 0);
        let vdso = cache.file(&VDSO).expect("the vDSO is copied");
        assert!(std::fs::read(vdso.fd_path()).unwrap().starts_with(b"\x7fELF"));
    }
}
