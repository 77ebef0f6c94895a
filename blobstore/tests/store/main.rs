//! Integration tests of `BlobStore` through its public API, on real filesystem disks
//! (tempdirs) and on simulated disks that lose unsynced writes, and between stores that
//! reach each other's disks through the shard service on loopback. One test binary, so
//! the crate and its helpers are built once.

mod common;
mod crash;
mod disk_full;
mod faults;
mod hedge;
mod repair;
mod round_trip;
mod rpc;
mod scrub;
mod sweep;
