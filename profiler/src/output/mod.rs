//! Renderings of an analysed recording.

pub mod report;
