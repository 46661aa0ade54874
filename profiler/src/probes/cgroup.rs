//! The cgroup v2 directory a filter names: given as a path (`--cgroup`), or found by the container
//! (`--container`) or pod (`--pod`) whose cgroup it is, in the layouts `recording::Container`
//! reads. The kernel filters by the directory's id, its tasks and those of every cgroup below it.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::recording::Container;

/// How deep below the root the search for a container's or pod's cgroup goes (kubelet nests
/// containers 4 deep, kind 6).
const MAX_SEARCH_DEPTH: usize = 10;

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on unified systems,
/// /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(PathBuf::from))
        .ok_or_else(|| anyhow!("no cgroup v2 hierarchy is mounted: filtering by cgroup needs cgroup v2"))
}

/// The cgroup v2 id of a cgroup directory (absolute, or relative to the cgroup v2 root): its inode
/// number on cgroupfs.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    let path = if path.is_absolute() { path.to_path_buf() } else { cgroup2_root()?.join(path) };
    let stat = nix::sys::statfs::statfs(&path).with_context(|| format!("cgroup {}", path.display()))?;
    if stat.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory (cgroup v1 is not supported)", path.display());
    }
    Ok(std::fs::metadata(&path)?.ino())
}

/// The cgroup of a container, by its id (64 hex digits, or a prefix of at least 12 as
/// `docker ps` shows it), also as Kubernetes writes it in a pod's status (`containerd://<id>`).
pub fn container_cgroup(id: &str) -> Result<PathBuf> {
    let id = id.rsplit_once("://").map_or(id, |(_, id)| id).to_ascii_lowercase();
    if id.len() < 12 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--container takes a container id: 12 to 64 hex digits (as `docker ps` or `crictl ps` show it)");
    }
    let found = search(|container| container.id.starts_with(&id))?;
    one_of(found, &format!("container {id}"))
}

/// The cgroup of a Kubernetes pod, by its uid (`kubectl get pod NAME -o jsonpath='{.metadata.uid}'`).
pub fn pod_cgroup(uid: &str) -> Result<PathBuf> {
    let uid = uid.replace('_', "-").to_ascii_lowercase();
    if uid.len() != 36 && uid.len() != 32 || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        bail!("--pod takes a pod uid, such as 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
    }
    let found = search(|container| container.id.is_empty() && container.pod_uid.as_deref() == Some(uid.as_str()))?;
    one_of(found, &format!("pod {uid}"))
}

fn one_of(mut found: Vec<PathBuf>, what: &str) -> Result<PathBuf> {
    match found.len() {
        0 => bail!("no cgroup v2 directory of {what} (is it running on this host, in cgroup v2?)"),
        1 => Ok(found.remove(0)),
        _ => {
            let paths: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            bail!("{what} is ambiguous: {}", paths.join(", "))
        }
    }
}

/// The cgroup directories whose path names a container or pod that `wanted` accepts; the search
/// does not go below a match.
fn search(wanted: impl Fn(&Container) -> bool) -> Result<Vec<PathBuf>> {
    let root = cgroup2_root()?;
    let mut found = Vec::new();
    let mut level = vec![root.clone()];
    for _ in 0..MAX_SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in level {
            // A cgroup may go away while we look.
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = entry.path();
                let relative = path.strip_prefix(&root).unwrap_or(&path);
                let named = Container::from_cgroup_path(&format!("/{}", relative.display()));
                if named.as_ref().is_some_and(&wanted) {
                    found.push(path);
                } else {
                    next.push(path);
                }
            }
        }
        level = next;
    }
    Ok(found)
}
