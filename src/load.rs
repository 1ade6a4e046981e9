//! `herd load`: a load generator for line-protocol TCP servers (in progress).

pub mod timetable;
pub mod workload;
