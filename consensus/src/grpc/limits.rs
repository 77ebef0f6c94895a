//! Limits of the Raft transport: message sizes, entries per AppendEntries, snapshot
//! sizes and the timeouts that are not derived from openraft's `RPCOption`.

use std::time::Duration;

use berth_types::limits::MANIFEST_BYTES_MAX;

/// Log entries per AppendEntries message (openraft's `max_payload_entries` in a cluster).
pub(crate) const APPEND_ENTRIES_MAX: u64 = 32;

/// Room per log entry beyond a manifest's bytes: its blob and manifest lists, tags,
/// annotations, an inline blob and the openraft envelope.
pub(crate) const ENTRY_OVERHEAD_BYTES_MAX: usize = 1024 * 1024;

/// Largest protobuf message either end encodes or decodes.
pub(crate) const RPC_MESSAGE_BYTES_MAX: usize = 192 * 1024 * 1024;

/// Snapshot chunk size used when openraft does not suggest one.
pub(crate) const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 1024 * 1024;
/// Bounds applied to the chunk size openraft suggests.
pub(crate) const SNAPSHOT_CHUNK_BYTES_MIN: usize = 1024;
pub(crate) const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest snapshot a node accepts. A snapshot is staged on disk as it arrives, so
/// this bounds the receiver's disk use, not its memory.
pub(crate) const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// How long a receiver waits for the next message of a snapshot stream.
pub(crate) const SNAPSHOT_IDLE_MAX: Duration = Duration::from_secs(30);

/// How long dialing a peer may take before the RPC fails as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 keepalive: a peer that stops answering pings is dropped and redialed.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(
    APPEND_ENTRIES_MAX as usize * (MANIFEST_BYTES_MAX + ENTRY_OVERHEAD_BYTES_MAX)
        < RPC_MESSAGE_BYTES_MAX
);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MIN <= SNAPSHOT_CHUNK_BYTES_DEFAULT);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_DEFAULT <= SNAPSHOT_CHUNK_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX < RPC_MESSAGE_BYTES_MAX);
