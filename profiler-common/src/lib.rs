//! Types shared by the eBPF programs (`profiler-ebpf`) and the loader (`profiler`):
//! the histogram bucket scheme and each probe's map layouts.
#![no_std]

pub mod counters;
pub mod histogram;
pub mod offcpu;
pub mod oncpu;
pub mod process;
pub mod runqlat;
pub mod syscalls;
pub mod unwind;

/// Implements `aya::Pod` for types that userspace reads from or writes to maps.
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `#[repr(C)]`, only integer fields, no padding.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use user_pod;
