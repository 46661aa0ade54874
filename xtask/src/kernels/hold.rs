//! Holds tracepoints enabled for a whole guest run: two empty raw-tracepoint programs on each, from
//! before the first test to after the last.
//!
//! Why: the kernel patches a tracepoint's call sites with int3 (text_poke_bp) when its first probe
//! comes or its last goes (the static branch), and when it goes from one probe to two or back (the
//! static call, direct to the one probe or through the iterator). Under qemu's software emulation
//! another vCPU can run the int3 after the patch is done and oops ("Oops: int3" in `__schedule`
//! and `ttwu_do_activate`, seen on 6.12 as the tests attached and detached). Hardware and KVM keep
//! the ordering the kernel relies on. With two programs held on each tracepoint the tests use,
//! their attaching and detaching patches nothing: the tests run as they would beside two other
//! tracers, and the guests stop faulting on the emulator's behalf.

use std::{convert::Infallible, ffi::CString, os::fd::RawFd};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: i64 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// The tracepoints the probes attach to.
pub const HELD: [&str; 7] = [
    "sched_switch",
    "sched_wakeup",
    "sched_wakeup_new",
    "sched_process_exec",
    "sched_process_exit",
    "sys_enter",
    "sys_exit",
];

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> Result<RawFd> {
    // SAFETY: `attr` is a live buffer of the length passed; the kernel reads and writes only it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(fd as RawFd)
}

/// Loads `r0 = 0; exit` as a raw tracepoint program and attaches it to `name`; it stays attached
/// while the returned fd is open.
fn hold(name: &str) -> Result<RawFd> {
    // r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K), exit (BPF_JMP | BPF_EXIT).
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = CString::new("GPL")?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("cannot load an empty program for {name}"))?;
    let tracepoint = CString::new(name)?;
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(tracepoint.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(prog as u32).to_ne_bytes());
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr).with_context(|| format!("cannot hold tracepoint {name}"))
}

/// Holds every tracepoint of `HELD` twice, says so, and waits to be killed (its fds close with it).
pub fn run() -> Result<Infallible> {
    let _links: Vec<RawFd> = HELD.iter().chain(&HELD).map(|name| hold(name)).collect::<Result<_>>()?;
    println!("holding {}", HELD.join(", "));
    loop {
        // SAFETY: pause has no arguments and no memory effects.
        unsafe { libc::pause() };
    }
}
