//! The offline half of the profiler's pipeline (probes → collector → **recording → analysis →
//! outputs**): the recording model and file format, what is computed from a recording, and its
//! renderings. Nothing here touches the kernel, so it builds and tests on stable Rust without the
//! eBPF toolchain (`cargo test -p profiler-core`), and the fuzz targets need nothing else.

pub mod analysis;
pub mod atomic_file;
pub mod output;
pub mod recording;
pub mod text;
