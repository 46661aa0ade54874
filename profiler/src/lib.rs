//! The profiler's pipeline: probes → collector → recording → analysis → output.

pub mod analysis;
pub mod atomic_file;
pub mod cli;
pub mod collector;
pub mod output;
pub mod probes;
pub mod recording;
pub mod serve;
pub mod symbolize;
