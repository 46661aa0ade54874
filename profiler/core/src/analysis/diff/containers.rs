//! Containers: each one's share of the CPU samples and its syscall rate, compared by what names it
//! across deployments (a new rollout has new ids and pod names): its namespace and container name
//! where the runtime said them, else its id.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ContainerComparison, Finding, FindingKind, Findings,
    stats::{change_percent, rate_z, two_proportion_z},
    syscalls::seconds,
};
use crate::{
    analysis::{percent, summary},
    recording::{Container, Recording},
};

/// Containers below this share of the samples (percent) on both sides are too small to flag.
const MIN_CPU_SHARE: f64 = 1.0;

/// What a container is called in a comparison.
fn key(container: &Container) -> String {
    match (&container.namespace, &container.name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        (None, Some(name)) => name.clone(),
        _ if container.id.is_empty() => format!("pod {}", container.pod_uid.as_deref().unwrap_or("?")),
        _ => container.short_id().to_string(),
    }
}

/// One side: its samples and seconds, whether it counted syscalls, and each container's (CPU
/// samples, syscalls).
struct Side {
    samples: u64,
    seconds: f64,
    counted_syscalls: bool,
    containers: BTreeMap<String, (u64, u64)>,
}

impl Side {
    fn of(recording: &Recording) -> Self {
        let mut containers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for container in summary::containers(recording) {
            let entry = containers.entry(key(&container.container)).or_default();
            entry.0 = entry.0.saturating_add(container.cpu_samples);
            entry.1 = entry.1.saturating_add(container.syscalls);
        }
        let samples = recording.stacks.as_ref().map_or(0, |stacks| stacks.samples());
        Side { samples, seconds: seconds(recording), counted_syscalls: recording.syscalls.is_some(), containers }
    }

    fn of_key(&self, key: &str) -> (u64, u64) {
        self.containers.get(key).copied().unwrap_or_default()
    }
}

pub fn compare(base: &Recording, new: &Recording, findings: &mut Findings) -> Vec<ContainerComparison> {
    let (base, new) = (Side::of(base), Side::of(new));
    let keys: BTreeSet<&String> = base.containers.keys().chain(new.containers.keys()).collect();
    let z_crit = findings.critical_z(keys.len() * 2);
    let mut comparisons: Vec<ContainerComparison> = keys
        .into_iter()
        .map(|key| {
            let (b, n) = (base.of_key(key), new.of_key(key));
            let comparison = ContainerComparison {
                container: key.clone(),
                in_base: base.containers.contains_key(key),
                in_new: new.containers.contains_key(key),
                base_cpu_percent: percent(b.0, base.samples),
                new_cpu_percent: percent(n.0, new.samples),
                cpu_z: two_proportion_z(b.0, base.samples, n.0, new.samples),
                base_syscalls_per_second: b.1 as f64 / base.seconds,
                new_syscalls_per_second: n.1 as f64 / new.seconds,
                syscall_z: rate_z(b.1, base.seconds, n.1, new.seconds),
            };
            // A container on one side only (a rollout without names, a new service) is listed,
            // not judged; so is a rate that one side did not count.
            let judged = Judged {
                cpu: comparison.in_base && comparison.in_new && base.samples > 0 && new.samples > 0,
                syscalls: comparison.in_base && comparison.in_new && base.counted_syscalls && new.counted_syscalls,
            };
            flag(&comparison, judged, z_crit, findings);
            comparison
        })
        .collect();
    comparisons.sort_by(|a, b| {
        let grew = |c: &ContainerComparison| (c.new_cpu_percent - c.base_cpu_percent).abs();
        grew(b).total_cmp(&grew(a)).then_with(|| a.container.cmp(&b.container))
    });
    comparisons
}

/// Which of a container's measures both sides have.
#[derive(Clone, Copy)]
struct Judged {
    cpu: bool,
    syscalls: bool,
}

fn flag(c: &ContainerComparison, judged: Judged, z_crit: f64, findings: &mut Findings) {
    let large_enough = c.base_cpu_percent.max(c.new_cpu_percent) >= MIN_CPU_SHARE;
    for (metric, before, after, z, unit, judged) in [
        ("CPU share", c.base_cpu_percent, c.new_cpu_percent, c.cpu_z, "% of samples", judged.cpu && large_enough),
        ("syscall rate", c.base_syscalls_per_second, c.new_syscalls_per_second, c.syscall_z, "/s", judged.syscalls),
    ] {
        findings.flag_if(
            judged && z.abs() > z_crit,
            Finding {
                kind: FindingKind::Container,
                subject: c.container.clone(),
                metric: metric.into(),
                base: before,
                new: after,
                unit: unit.into(),
                change_percent: change_percent(before, after),
                detail: format!("z = {z:.1}"),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Frame, Process, Stack, Stacks};

    /// A recording of 10 s in which each (container name, samples) ran.
    fn recording(containers: &[(&str, &str, u64)]) -> Recording {
        let mut recording = Recording::default();
        recording.meta.duration_ns = 10_000_000_000;
        let mut stacks =
            Stacks { frames: vec![Frame { function: "work".into(), ..Default::default() }], ..Default::default() };
        for (tgid, &(id, name, samples)) in (1..).zip(containers) {
            let container = Container {
                id: id.repeat(64),
                name: Some(name.into()).filter(|n: &String| !n.is_empty()),
                namespace: Some("shop".into()).filter(|_| !name.is_empty()),
                ..Default::default()
            };
            recording
                .processes
                .insert(tgid, Process { comm: "app".into(), container: Some(container), ..Default::default() });
            stacks.stacks.push(Stack { tgid, tid: 0, frames: vec![0], count: samples, blocks: 0 });
        }
        recording.stacks = Some(stacks);
        recording
    }

    #[test]
    fn a_container_that_grew_is_flagged_across_a_rollout() {
        let options = super::super::DiffOptions { threshold_percent: 10.0, confidence: 0.99, top: 10 };
        // A new rollout: new ids, the same names; "web" went from 20 % to 40 % of the samples.
        let base = recording(&[("a", "web", 2000), ("b", "db", 8000), ("c", "", 1)]);
        let new = recording(&[("d", "web", 4000), ("e", "db", 6000), ("f", "", 1)]);
        let diff = super::super::diff(&base, &new, &options);
        let web = diff.containers.iter().find(|c| c.container == "shop/web").expect("web compared by name");
        assert_eq!((web.base_cpu_percent.round(), web.new_cpu_percent.round()), (20.0, 40.0));
        assert!(
            diff.regressions.iter().any(|f| f.kind == FindingKind::Container && f.subject == "shop/web"),
            "{:?}",
            diff.regressions
        );
        assert!(diff.improvements.iter().any(|f| f.subject == "shop/db"));
        // Without names, a container is its id: one that is gone and one that is new, listed and
        // not judged; neither side counted syscalls, so no rate is judged either.
        let gone = diff.containers.iter().find(|c| c.container == "cccccccccccc").expect("the gone one");
        assert!(gone.in_base && !gone.in_new && gone.new_cpu_percent == 0.0);
        let flagged = |name: &str| diff.regressions.iter().chain(&diff.improvements).any(|f| f.subject == name);
        assert!(!flagged("cccccccccccc") && !flagged("ffffffffffff"));
        assert!(diff.regressions.iter().chain(&diff.improvements).all(|f| f.metric == "CPU share"));
        // The same recording against itself flags nothing.
        let same = super::super::diff(&base, &base, &options);
        assert!(same.regressions.is_empty() && same.improvements.is_empty());
    }
}
