//! The profiler's pipeline: probes → collector → recording → analysis → outputs. This crate is the
//! live half (loading probes, the session that drains them, symbolization, `serve`); the recording,
//! its analysis and its outputs are `profiler-core`, re-exported here.

pub mod cli;
pub mod collector;
pub mod commands;
pub mod probes;
pub mod serve;
pub mod symbolize;
pub mod top;
pub mod unwind;

pub use profiler_core::{analysis, atomic_file, output, recording, text};
