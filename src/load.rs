//! `herd load`: a load generator for line-protocol TCP servers (in progress).

pub mod plot;
pub mod report;
pub mod timetable;
pub mod workload;
