//! Offsets of the kernel struct fields the eBPF programs read, taken from the running kernel's BTF.
//! This is what CO-RE relocations do for C programs; Rust eBPF has none, so the loader does it.

use std::{os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

use super::program::tracepoint_type_id;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of the fields the programs read; each becomes a global of the same name in the
/// eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// `__state` since Linux 5.14, `state` before.
    pub task_state: u32,
    /// `task_struct.stack`: the kernel stack, whose top holds the user registers.
    pub task_stack: u32,
    /// The size of a kernel stack: 16 KiB on x86-64, twice that with KASAN.
    pub thread_size: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `__parent` since Linux 6.15, `parent` before.
    pub kernfs_node_parent: u32,
}

impl KernelLayout {
    pub fn from_btf(btf: &Btf) -> Result<Self> {
        let offset = |strukt: &str, field: &str| field_offset(btf, strukt, field);
        Ok(Self {
            task_pid: offset("task_struct", "pid")?,
            task_tgid: offset("task_struct", "tgid")?,
            task_group_leader: offset("task_struct", "group_leader")?,
            task_comm: offset("task_struct", "comm")?,
            task_state: offset("task_struct", "__state").or_else(|_| offset("task_struct", "state"))?,
            task_stack: offset("task_struct", "stack")?,
            thread_size: if btf.resolve_ids_by_name("kasan_cache").is_ok_and(|ids| !ids.is_empty()) {
                32768
            } else {
                16384
            },
            task_cgroups: offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: offset("css_set", "dfl_cgrp")?,
            cgroup_kn: offset("cgroup", "kn")?,
            kernfs_node_id: offset("kernfs_node", "id")?,
            kernfs_node_parent: offset("kernfs_node", "__parent").or_else(|_| offset("kernfs_node", "parent"))?,
        })
    }

    /// (global name, value) pairs for the loader.
    pub fn globals(&self) -> [(&'static str, u32); 11] {
        [
            ("TASK_PID_OFFSET", self.task_pid),
            ("TASK_TGID_OFFSET", self.task_tgid),
            ("TASK_GROUP_LEADER_OFFSET", self.task_group_leader),
            ("TASK_COMM_OFFSET", self.task_comm),
            ("TASK_STATE_OFFSET", self.task_state),
            ("TASK_STACK_OFFSET", self.task_stack),
            ("TASK_CGROUPS_OFFSET", self.task_cgroups),
            ("CSS_SET_DFL_CGRP_OFFSET", self.css_set_dfl_cgrp),
            ("CGROUP_KN_OFFSET", self.cgroup_kn),
            ("KERNFS_NODE_ID_OFFSET", self.kernfs_node_id),
            ("KERNFS_NODE_PARENT_OFFSET", self.kernfs_node_parent),
        ]
    }
}

/// Byte offset of `field` in `struct name`, looking through anonymous structs and unions.
fn field_offset(btf: &Btf, name: &str, field: &str) -> Result<u32> {
    let strukt = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("kernel BTF has no struct {name}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("kernel BTF has no struct {name}"))?;
    find_member(btf, &strukt, field)?
        .map(|bits| bits / 8)
        .ok_or_else(|| anyhow!("kernel BTF: struct {name} has no field {field}"))
}

fn find_member(btf: &Btf, strukt: &btf_rs::Struct, field: &str) -> Result<Option<u32>> {
    for member in &strukt.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        if member_name == field {
            return Ok(Some(member.bit_offset()));
        }
        if member_name.is_empty() {
            let (Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(member)? else {
                continue;
            };
            if let Some(bits) = find_member(btf, &inner, field)? {
                return Ok(Some(member.bit_offset() + bits));
            }
        }
    }
    Ok(None)
}

/// What aya needs to load BTF tracepoint programs: a BTF in which each `btf_trace_<name>` typedef
/// has the type id it has in the kernel's BTF, the id the kernel checks the program against. aya
/// only looks these typedefs up by name, so every other type up to the highest of their ids is a
/// 12-byte placeholder: parsing the whole vmlinux BTF into aya's structures would cost about 16 MB
/// of memory for a handful of ids.
pub fn attach_targets(btf: &Btf, tracepoints: &[&str]) -> Result<aya::Btf> {
    const KIND_PTR: u32 = 2;
    const KIND_TYPEDEF: u32 = 8;
    let mut targets = Vec::new();
    for name in tracepoints {
        targets.push((tracepoint_type_id(btf, name)?, format!("btf_trace_{name}")));
    }
    let last = targets.iter().map(|(id, _)| *id).max().unwrap_or(0);
    let mut strings = vec![0u8];
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (name_offset, kind) = match targets.iter().find(|(target, _)| *target == id) {
            Some((_, name)) => {
                let offset = strings.len() as u32;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                (offset, KIND_TYPEDEF)
            }
            None => (0, KIND_PTR),
        };
        // struct btf_type { name_off, info (kind in bits 24..29), type }; both kinds point at void.
        for word in [name_offset, kind << 24, 0] {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    }
    const HEADER_LEN: u32 = 24;
    let mut blob = Vec::with_capacity(HEADER_LEN as usize + types.len() + strings.len());
    blob.extend_from_slice(&0xEB9Fu16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]); // version, flags
    for word in [HEADER_LEN, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings);
    aya::Btf::parse(&blob, aya::Endianness::default()).context("cannot build the BTF for the tracepoint programs")
}

/// The running kernel's BTF, and how it was read.
pub struct KernelBtf {
    pub btf: Btf,
    /// Whether the kernel let us map /sys/kernel/btf/vmlinux (Linux 6.16 and later).
    pub mapped: bool,
}

/// The running kernel's BTF, or a clear error on kernels built without it. Mapped where the kernel
/// allows it, since only the few types we look up are then ever parsed; older kernels refuse to map
/// the file (ENODEV), so it is read into a memory file and that is mapped instead: the same lazy
/// parsing, for the memory of the raw BTF (a few MB) while the loader runs.
pub fn load_vmlinux() -> Result<KernelBtf> {
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "this kernel exposes no BTF ({VMLINUX_BTF} is missing): a kernel built with CONFIG_DEBUG_INFO_BTF=y is required"
        );
    }
    match Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap) {
        Ok(btf) => return Ok(KernelBtf { btf, mapped: true }),
        Err(error) => tracing::debug!("cannot map {VMLINUX_BTF} ({error}); reading it instead"),
    }
    let copy = read_into_memory_file(Path::new(VMLINUX_BTF)).with_context(|| format!("cannot read {VMLINUX_BTF}"))?;
    let btf = Btf::from_file_with_backend(format!("/proc/self/fd/{}", copy.as_raw_fd()), btf_rs::Backend::Mmap)
        .with_context(|| format!("cannot parse {VMLINUX_BTF}"))?;
    Ok(KernelBtf { btf, mapped: false })
}

/// A copy of `path` in an anonymous memory file (memfd), which can always be mapped. The mapping
/// made from it keeps the memory alive after the returned descriptor is closed.
fn read_into_memory_file(path: &Path) -> Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(c"profiler-btf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    std::io::copy(&mut std::fs::File::open(path)?, &mut file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this runs on has these fields; the check is that the offsets are plausible and
    /// consistent with each other (tgid follows pid in task_struct).
    #[test]
    fn running_kernel_layout() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let btf = load_vmlinux().unwrap().btf;
        let layout = KernelLayout::from_btf(&btf).unwrap();
        assert_eq!(layout.task_tgid, layout.task_pid + 4);
        assert!(layout.task_comm > layout.task_pid);
        assert!(layout.task_state < layout.task_pid, "the state is near the top of task_struct");
    }

    /// The copy made where the kernel refuses to map the file parses to the same types.
    #[test]
    fn memory_file_copy_parses_like_the_mapped_file() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let copy = read_into_memory_file(Path::new(VMLINUX_BTF)).unwrap();
        let from_copy =
            Btf::from_file_with_backend(format!("/proc/self/fd/{}", copy.as_raw_fd()), btf_rs::Backend::Mmap).unwrap();
        let direct = load_vmlinux().unwrap().btf;
        assert_eq!(KernelLayout::from_btf(&from_copy).unwrap(), KernelLayout::from_btf(&direct).unwrap());
    }

    /// The skeleton BTF gives each tracepoint typedef the id the full kernel BTF gives it.
    #[test]
    fn attach_targets_keep_kernel_ids() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let names = ["sched_switch", "sys_exit", "sched_process_exit"];
        let skeleton = attach_targets(&load_vmlinux().unwrap().btf, &names).unwrap();
        let full = aya::Btf::from_sys_fs().unwrap();
        for name in names {
            let typedef = format!("btf_trace_{name}");
            let kind = aya_obj::btf::BtfKind::Typedef;
            assert_eq!(
                skeleton.id_by_type_name_kind(&typedef, kind).unwrap(),
                full.id_by_type_name_kind(&typedef, kind).unwrap(),
                "{typedef}"
            );
        }
        assert!(attach_targets(&load_vmlinux().unwrap().btf, &["no_such_tracepoint"]).is_err());
    }
}
