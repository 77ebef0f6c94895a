//! Integration tests of `BlobStore` through its public API, on real filesystem disks
//! (tempdirs) and on simulated disks that lose unsynced writes. One test binary, so
//! the crate and its helpers are built once.

mod common;
mod crash;
mod disk_full;
mod repair;
mod round_trip;
mod sweep;
