//! Failover drills for berth clusters: a workload that records a history of every
//! operation, faults injected on a seeded schedule (process kills and pauses, and
//! partitions as real packet drops between network namespaces), invariant checkers
//! over the history, and Markdown/JSON/SVG reports.

pub mod check;
pub mod drill;
pub mod fault;
pub mod history;
pub mod lab;
pub mod netns;
pub mod proxy;
pub mod report;
pub mod topology;
pub mod workload;
