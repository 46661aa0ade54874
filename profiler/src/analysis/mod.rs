//! Turning a recording into numbers people read: percentiles and the summary behind `report`.

pub mod diff;
pub mod histogram;
pub mod hotpaths;
pub mod summary;
