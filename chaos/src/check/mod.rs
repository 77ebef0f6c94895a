//! Invariant checkers over a recorded history, one module per invariant. Each is a
//! pure function from events (and the fault timeline or final node states) to a
//! [`Verdict`], so it can be tested on hand-built histories.

pub mod convergence;
pub mod digests;
pub mod durability;
pub mod minority;
pub mod statuses;
pub mod tags;

#[cfg(test)]
mod tests;

use serde::Serialize;

/// Violations quoted per verdict; the rest are counted.
pub const QUOTED_MAX: usize = 20;

/// The result of one checker.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub name: &'static str,
    pub invariant: &'static str,
    /// How many operations or facts the checker looked at.
    pub checked: u64,
    pub violations: u64,
    /// The first violations, in words.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn new(name: &'static str, invariant: &'static str) -> Verdict {
        Verdict {
            name,
            invariant,
            checked: 0,
            violations: 0,
            examples: Vec::new(),
        }
    }

    pub fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < QUOTED_MAX {
            self.examples.push(what);
        }
    }

    pub fn passed(&self) -> bool {
        self.violations == 0
    }
}
