//! What the running kernel offers, found at start by asking it (a map created, a helper call
//! verified), not by its version: distribution kernels backport features, and configurations
//! differ. Each probe names what it needs; one that cannot run here is left out with the reason.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};
use btf_rs::Btf;

/// A kernel feature some probe needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// BTF-typed tracepoint programs (`tp_btf`), Linux 5.5.
    BtfTracepoints,
    /// The BPF ring buffer, Linux 5.8.
    RingBuffer,
    /// Stack-trace maps for `bpf_get_stackid`, Linux 4.6.
    StackTraces,
    /// `bpf_task_pt_regs`: a task's user registers from a program that interrupted the kernel,
    /// Linux 5.15.
    TaskPtRegs,
    /// Task-local storage maps, Linux 5.11.
    TaskStorage,
}

impl Feature {
    pub const ALL: [Feature; 5] =
        [Feature::BtfTracepoints, Feature::RingBuffer, Feature::StackTraces, Feature::TaskPtRegs, Feature::TaskStorage];

    /// What it is and the first mainline kernel that has it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::BtfTracepoints => "BTF tracepoints (tp_btf, Linux 5.5)",
            Feature::RingBuffer => "the BPF ring buffer (Linux 5.8)",
            Feature::StackTraces => "BPF stack-trace maps (Linux 4.6)",
            Feature::TaskPtRegs => "the bpf_task_pt_regs helper (Linux 5.15)",
            Feature::TaskStorage => "BPF task-local storage (Linux 5.11)",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::BtfTracepoints => "tp_btf",
            Feature::RingBuffer => "ring_buffer",
            Feature::StackTraces => "stack_trace_map",
            Feature::TaskPtRegs => "task_pt_regs",
            Feature::TaskStorage => "task_storage",
        }
    }
}

/// The features the running kernel has.
#[derive(Clone, Debug, Default)]
pub struct KernelFeatures {
    pub release: String,
    present: Vec<Feature>,
    /// Whether /sys/kernel/btf/vmlinux could be mapped (Linux 6.16), else it was read.
    pub btf_mapped: bool,
}

impl KernelFeatures {
    /// Asks the running kernel. Needs the privileges loading programs needs.
    pub fn probe(btf: &Btf, btf_mapped: bool) -> KernelFeatures {
        let present = Feature::ALL.into_iter().filter(|&feature| has(btf, feature)).collect();
        let release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let features = KernelFeatures { release, present, btf_mapped };
        tracing::info!("kernel {}: {}", features.release, features.names().join(", "));
        features
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.present.contains(&feature)
    }

    /// Names of the features present, plus `btf_mmap` when the BTF could be mapped.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.present.iter().map(|f| f.name()).collect();
        if self.btf_mapped {
            names.push("btf_mmap");
        }
        names
    }

    /// The first of `needed` that is missing.
    pub fn missing(&self, needed: &[Feature]) -> Option<Feature> {
        needed.iter().copied().find(|&feature| !self.has(feature))
    }
}

fn has(btf: &Btf, feature: Feature) -> bool {
    let answer = match feature {
        // tp_btf came with the btf_trace_* typedefs it attaches through (5.5); no load needed.
        Feature::BtfTracepoints => {
            return btf.resolve_ids_by_name("btf_trace_sched_switch").is_ok_and(|ids| !ids.is_empty());
        }
        Feature::RingBuffer => is_map_supported(MapType::RingBuf).map_err(|e| e.to_string()),
        Feature::StackTraces => is_map_supported(MapType::StackTrace).map_err(|e| e.to_string()),
        Feature::TaskStorage => is_map_supported(MapType::TaskStorage).map_err(|e| e.to_string()),
        Feature::TaskPtRegs => {
            is_helper_supported(ProgramType::PerfEvent, BpfHelper::BPF_FUNC_task_pt_regs).map_err(|e| e.to_string())
        }
    };
    answer.unwrap_or_else(|error| {
        tracing::debug!("cannot tell whether the kernel has {}: {error}", feature.describe());
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel this runs on (CI's, 6.18) has every feature; each probe answers without error.
    #[test]
    fn running_kernel_has_what_the_probes_need() {
        let Ok(kernel) = crate::probes::btf::load_vmlinux() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let features = KernelFeatures::probe(&kernel.btf, kernel.mapped);
        for feature in [Feature::BtfTracepoints, Feature::RingBuffer, Feature::StackTraces] {
            assert!(features.has(feature), "{}", feature.describe());
        }
        assert_eq!(features.missing(&[Feature::BtfTracepoints, Feature::StackTraces]), None);
        assert!(!features.release.is_empty());
    }
}
