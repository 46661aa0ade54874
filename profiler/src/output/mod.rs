//! Renderings of an analysed recording.

pub mod flamegraph;
pub mod report;
