//! eBPF programs of the profiler, one module per probe (as in libbpf-tools), plus what they share.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]
// Beyond the workspace's lints: every unsafe block here says why it holds, since the verifier checks
// memory safety but not that the program reads what it means to.
#![deny(clippy::undocumented_unsafe_blocks)]
// aya's program macros fix the entry points' signatures: the context comes by value.
#![allow(clippy::needless_pass_by_value)]

mod offcpu;
mod oncpu;
mod runqlat;
mod shared;
mod syscalls;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects code that could reach this; it only satisfies the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
