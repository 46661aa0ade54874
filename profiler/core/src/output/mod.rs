//! Renderings of an analysed recording.

pub mod diff;
pub mod flamegraph;
pub mod pprof;
pub mod prometheus;
pub mod report;
