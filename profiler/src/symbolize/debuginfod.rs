//! Debug files from debuginfod servers, for stripped binaries whose debug files are not on this
//! machine: by build-id, from the servers `DEBUGINFOD_URLS` names, cached on disk where elfutils
//! caches them (so `gdb`, `perf` and the profiler share one cache). Plain HTTP is fetched here;
//! HTTPS through elfutils' `debuginfod-find` when it is installed. Every fetch has a short timeout,
//! a server that fails is not asked again, and all fetches together get a bounded time: a
//! recording never waits long for names.

use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long all fetches of a session may take together.
const FETCH_BUDGET: Duration = Duration::from_secs(20);
/// Debug files larger than this are not fetched.
const MAX_DEBUG_FILE: u64 = 1 << 30;

pub struct Debuginfod {
    servers: Vec<String>,
    cache: PathBuf,
    /// Build-ids asked for, and where their debug file is (none: no server has it).
    known: HashMap<String, Option<PathBuf>>,
    failed_servers: HashSet<String>,
    spent: Duration,
}

impl Debuginfod {
    /// From `DEBUGINFOD_URLS` (space-separated); none when it is unset or empty.
    pub fn from_env() -> Option<Debuginfod> {
        let urls = std::env::var("DEBUGINFOD_URLS").ok()?;
        let servers: Vec<String> = urls.split_whitespace().map(|url| url.trim_end_matches('/').to_string()).collect();
        if servers.is_empty() {
            return None;
        }
        Some(Debuginfod {
            servers,
            cache: cache_dir(),
            known: HashMap::new(),
            failed_servers: HashSet::new(),
            spent: Duration::ZERO,
        })
    }

    /// The debug file of `build_id` (hex), from the cache or a server.
    pub fn debug_file(&mut self, build_id: &str) -> Option<PathBuf> {
        if let Some(known) = self.known.get(build_id) {
            return known.clone();
        }
        let cached = self.cache.join(build_id).join("debuginfo");
        let found = if cached.is_file() { Some(cached) } else { self.fetch(build_id, &cached) };
        self.known.insert(build_id.to_string(), found.clone());
        found
    }

    fn fetch(&mut self, build_id: &str, target: &Path) -> Option<PathBuf> {
        for server in self.servers.clone() {
            if self.spent >= FETCH_BUDGET || self.failed_servers.contains(&server) {
                continue;
            }
            let started = Instant::now();
            let result = if server.starts_with("http://") {
                fetch_http(&server, build_id, target)
            } else {
                fetch_with_elfutils(&server, build_id, target)
            };
            self.spent += started.elapsed();
            match result {
                Ok(true) => return Some(target.to_path_buf()),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!("debuginfod server {server}: {error}; not asking it again");
                    self.failed_servers.insert(server);
                }
            }
        }
        None
    }
}

/// elfutils' cache: $DEBUGINFOD_CACHE_PATH, else $XDG_CACHE_HOME/debuginfod_client, else
/// ~/.cache/debuginfod_client.
fn cache_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("DEBUGINFOD_CACHE_PATH") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("debuginfod_client")
}

/// GET SERVER/buildid/ID/debuginfo into `target`: Ok(false) when the server has no such file,
/// Err when the server cannot be reached or answers otherwise.
fn fetch_http(server: &str, build_id: &str, target: &Path) -> Result<bool, String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(FETCH_TIMEOUT)).http_status_as_error(false).build().into();
    let response = agent.get(format!("{server}/buildid/{build_id}/debuginfo")).call().map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        200 => {}
        404 => return Ok(false),
        status => return Err(format!("HTTP status {status}")),
    }
    let mut body = Vec::new();
    response.into_body().into_reader().take(MAX_DEBUG_FILE).read_to_end(&mut body).map_err(|e| e.to_string())?;
    store(target, &body).map_err(|e| e.to_string())?;
    Ok(true)
}

/// `debuginfod-find debuginfo ID` against one server (it speaks HTTPS and fills the same cache).
fn fetch_with_elfutils(server: &str, build_id: &str, target: &Path) -> Result<bool, String> {
    let mut child = Command::new("debuginfod-find")
        .args(["debuginfo", build_id])
        .env("DEBUGINFOD_URLS", server)
        .env("DEBUGINFOD_TIMEOUT", FETCH_TIMEOUT.as_secs().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("HTTPS needs elfutils' debuginfod-find ({e})"))?;
    let deadline = Instant::now() + FETCH_TIMEOUT + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("debuginfod-find timed out".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut path = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut path);
    }
    let path = PathBuf::from(path.trim());
    if !status.success() || !path.is_file() {
        return Ok(false);
    }
    if path != target {
        store(target, &std::fs::read(&path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// Writes a cache entry whole or not at all.
fn store(target: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, data)?;
    file.persist(target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_gives_up_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut client = Debuginfod {
            servers: vec![format!("http://127.0.0.1:{port}")],
            cache: dir.path().to_path_buf(),
            known: HashMap::new(),
            failed_servers: HashSet::new(),
            spent: Duration::ZERO,
        };
        let started = Instant::now();
        assert_eq!(client.debug_file("0123456789abcdef"), None);
        assert_eq!(client.debug_file("fedcba9876543210"), None);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(client.failed_servers.len(), 1, "the server is not asked again");
    }

    #[test]
    fn the_cache_is_elfutils() {
        let dir = tempfile::tempdir().unwrap();
        let cached = dir.path().join("abcd").join("debuginfo");
        store(&cached, b"\x7fELF").unwrap();
        let mut client = Debuginfod {
            servers: vec!["http://127.0.0.1:9".into()],
            cache: dir.path().to_path_buf(),
            known: HashMap::new(),
            failed_servers: HashSet::new(),
            spent: Duration::ZERO,
        };
        assert_eq!(client.debug_file("abcd"), Some(cached));
        assert!(client.failed_servers.is_empty(), "a cached file needs no server");
    }
}
