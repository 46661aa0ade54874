//! The floor of the overhead table: empty programs on the profiler's own hooks (BTF tracepoints),
//! so the table shows how much of a tool's cost is the hook itself. Loaded with raw bpf(2) calls
//! from a handful of instructions: no object file, nothing but the hook and, with `clock`, the two
//! clock reads that any latency measurement makes.

use std::{convert::Infallible, ffi::CString, os::fd::RawFd};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: i64 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;

/// One eBPF instruction: opcode, registers (dst low nibble, src high), offset, immediate.
fn insn(code: u8, imm: i32) -> u64 {
    u64::from(code) | (u64::from(imm as u32) << 32)
}

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> Result<RawFd> {
    // SAFETY: `attr` is a live buffer of the length passed; the kernel reads and writes only it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(fd as RawFd)
}

fn put(attr: &mut [u8; 128], offset: usize, bytes: &[u8]) {
    attr[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Loads `r0 = 0; exit` (after a bpf_ktime_get_ns() call with `clock`) for BTF tracepoint `name`
/// and attaches it; the program stays attached while the returned fd is open.
fn attach(btf: &btf_rs::Btf, name: &str, clock: bool) -> Result<RawFd> {
    let id = profiler::probes::tracepoint_type_id(btf, name)?;
    let mut insns = Vec::new();
    if clock {
        insns.push(insn(0x85, BPF_FUNC_KTIME_GET_NS)); // call
    }
    insns.push(insn(0xb7, 0)); // r0 = 0
    insns.push(insn(0x95, 0)); // exit
    let license = CString::new("GPL")?;

    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_TRACING.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 68, &BPF_TRACE_RAW_TP.to_ne_bytes()); // expected_attach_type
    put(&mut attr, 108, &id.to_ne_bytes()); // attach_btf_id
    let prog = bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("cannot load the empty {name} program"))?;

    let mut attr = [0u8; 128];
    put(&mut attr, 8, &(prog as u32).to_ne_bytes()); // raw_tracepoint.prog_fd; name stays NULL
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr).with_context(|| format!("cannot attach the empty {name} program"))
}

/// Attaches the empty programs, says so, and waits to be killed (SIGINT ends it; closing the fds
/// detaches everything).
pub fn run(tracepoints: &[String], clock: bool) -> Result<Infallible> {
    let btf = profiler::probes::load_vmlinux()?.btf;
    let _links: Vec<RawFd> = tracepoints.iter().map(|name| attach(&btf, name, clock)).collect::<Result<_>>()?;
    println!("attached {}", tracepoints.join(", "));
    loop {
        // SAFETY: pause has no arguments and no memory effects.
        unsafe { libc::pause() };
    }
}
