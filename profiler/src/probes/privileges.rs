//! The capabilities loading tracing programs needs, checked up front so that a user without them
//! gets one line naming what is missing instead of an EPERM from deep inside the loader.

use anyhow::{Result, bail};
use caps::{CapSet, Capability};

pub fn check() -> Result<()> {
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    if effective.contains(&Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<String> = [Capability::CAP_BPF, Capability::CAP_PERFMON]
        .into_iter()
        .filter(|cap| !effective.contains(cap))
        .map(|cap| cap.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "missing {}: loading the probes needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run the profiler as root, e.g. with sudo",
        missing.join(" and ")
    )
}
