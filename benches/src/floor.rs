//! The floor of the overhead table: minimal programs on the profiler's own hooks (BTF
//! tracepoints), so the table shows how much of a tool's cost is the hook itself, and how much the
//! least that any latency measurement must do. Loaded with raw bpf(2) calls from a handful of
//! instructions: no object file, nothing but the hook and the body asked for.

use std::{convert::Infallible, ffi::CString, os::fd::RawFd};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

const BPF_MAP_CREATE: i64 = 0;
const BPF_PROG_LOAD: i64 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;
const BPF_FUNC_GET_CURRENT_PID_TGID: i32 = 14;
/// `ld_imm64`'s source register for "the address of a map's value": a direct load, no lookup.
const BPF_PSEUDO_MAP_VALUE: u8 = 2;

/// Thread ids index the start times by their low bits: 2^19 8-byte slots fill the largest value
/// an array map may have (4 MiB, KMALLOC_MAX_SIZE).
const THREAD_SLOT_BITS: u32 = 19;

/// What each floor program does besides being called.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Body {
    /// Nothing.
    Empty,
    /// Reads the clock once, as each end of a latency measurement must.
    Clock,
    /// Times each thread's passage from the first tracepoint to the others, the least a per-call
    /// latency costs: the first program stores the clock in the thread's slot (thread id, clock,
    /// one store), the others read it back and subtract (thread id, clock, one load). Nothing is
    /// aggregated and nothing filtered, so a tool that keeps any result costs more.
    ThreadLatency,
}

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code) | u64::from(dst | src << 4) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
}

fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}

/// What one floor program does: a `Body`, with a `ThreadLatency` body's map and end.
#[derive(Clone, Copy)]
enum Program {
    Empty,
    Clock,
    /// Stores the clock in the thread's slot of the map.
    Start(RawFd),
    /// Reads the thread's start back from the map and subtracts it from the clock.
    End(RawFd),
}

fn instructions(program: Program) -> Vec<u64> {
    let mut insns = Vec::new();
    match program {
        Program::Empty => {}
        Program::Clock => insns.push(call(BPF_FUNC_KTIME_GET_NS)),
        Program::Start(starts) | Program::End(starts) => {
            insns.extend([
                call(BPF_FUNC_GET_CURRENT_PID_TGID),
                insn(0xbf, 6, 0, 0, 0),                           // r6 = r0
                insn(0x57, 6, 0, 0, (1 << THREAD_SLOT_BITS) - 1), // r6 &= slots - 1 (the thread id's low bits)
                insn(0x67, 6, 0, 0, 3),                           // r6 <<= 3
                call(BPF_FUNC_KTIME_GET_NS),                      // r0 = now
                insn(0x18, 1, BPF_PSEUDO_MAP_VALUE, 0, starts),   // r1 = &starts[0]
                insn(0x00, 0, 0, 0, 0),                           // (ld_imm64's second half: offset 0)
                insn(0x0f, 1, 6, 0, 0),                           // r1 += r6
            ]);
            if let Program::Start(_) = program {
                insns.push(insn(0x7b, 1, 0, 0, 0)); // *(u64 *)r1 = r0
            } else {
                insns.push(insn(0x79, 2, 1, 0, 0)); // r2 = *(u64 *)r1
                insns.push(insn(0x1f, 0, 2, 0, 0)); // r0 -= r2: the latency
            }
        }
    }
    insns.push(insn(0xb7, 0, 0, 0, 0)); // r0 = 0
    insns.push(insn(0x95, 0, 0, 0, 0)); // exit
    insns
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

/// An array of one value holding a start time per thread slot.
fn start_map() -> Result<RawFd> {
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_MAP_TYPE_ARRAY.to_ne_bytes());
    put(&mut attr, 4, &4u32.to_ne_bytes()); // key_size
    put(&mut attr, 8, &(8u32 << THREAD_SLOT_BITS).to_ne_bytes()); // value_size
    put(&mut attr, 12, &1u32.to_ne_bytes()); // max_entries
    bpf(BPF_MAP_CREATE, &mut attr).context("cannot create the floor's start-time map")
}

/// Loads `insns` for BTF tracepoint `name` and attaches them; the program stays attached while
/// the returned fd is open.
fn attach(btf: &btf_rs::Btf, name: &str, insns: &[u64]) -> Result<RawFd> {
    let id = profiler::probes::tracepoint_type_id(btf, name)?;
    let license = CString::new("GPL")?;

    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_TRACING.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 68, &BPF_TRACE_RAW_TP.to_ne_bytes()); // expected_attach_type
    put(&mut attr, 108, &id.to_ne_bytes()); // attach_btf_id
    let prog = bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("cannot load the floor's {name} program"))?;

    let mut attr = [0u8; 128];
    put(&mut attr, 8, &(prog as u32).to_ne_bytes()); // raw_tracepoint.prog_fd; name stays NULL
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr).with_context(|| format!("cannot attach the floor's {name} program"))
}

/// Attaches a program with `body` to each tracepoint (the first is where a `thread-latency`
/// measurement starts), says so, and waits to be killed (SIGINT ends it; closing the fds detaches
/// everything).
pub fn run(tracepoints: &[String], body: Body) -> Result<Infallible> {
    let btf = profiler::probes::load_vmlinux()?.btf;
    let programs: Vec<Program> = match body {
        Body::Empty => vec![Program::Empty; tracepoints.len()],
        Body::Clock => vec![Program::Clock; tracepoints.len()],
        Body::ThreadLatency => {
            let starts = start_map()?;
            (0..tracepoints.len()).map(|i| if i == 0 { Program::Start(starts) } else { Program::End(starts) }).collect()
        }
    };
    let _links: Vec<RawFd> = tracepoints
        .iter()
        .zip(programs)
        .map(|(name, program)| attach(&btf, name, &instructions(program)))
        .collect::<Result<_>>()?;
    println!("attached {}", tracepoints.join(", "));
    loop {
        // SAFETY: pause has no arguments and no memory effects.
        unsafe { libc::pause() };
    }
}
