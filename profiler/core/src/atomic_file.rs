//! Files written whole or not at all: a temporary file in the target's directory, renamed over the
//! target once complete, so an interrupted or failed write never leaves a partial file behind.

use std::{
    fs,
    io::{BufWriter, Write},
    os::unix::fs::PermissionsExt as _,
    path::Path,
};

use anyhow::{Context as _, Result};

pub fn write(path: &Path, content: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".profiler-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    {
        let mut out = BufWriter::new(file.as_file_mut());
        content(&mut out)?;
        out.flush()?;
    }
    file.as_file().sync_all()?;
    file.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
    file.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
