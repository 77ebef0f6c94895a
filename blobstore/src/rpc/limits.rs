//! Limits of the shard service: message sizes, chunks queued per stream, stripes per
//! shard file and the timeouts of calls and streams.

use std::time::Duration;

use berth_types::limits::SHARD_BYTES_MAX;

/// Room in one message beyond a chunk's shard bytes: its checksum, stripe number,
/// ids, header fields and the protobuf envelope.
pub const RPC_OVERHEAD_BYTES_MAX: usize = 64 * 1024;

/// Largest protobuf message either end encodes or decodes: one chunk of the largest
/// shard size and its overhead.
pub const RPC_MESSAGE_BYTES_MAX: usize = SHARD_BYTES_MAX as usize + RPC_OVERHEAD_BYTES_MAX;

/// Chunks a client queues on one PutChunks stream before `ShardUpload::send` waits.
/// With HTTP/2 flow control this bounds the memory of one remote shard being written.
pub const PUT_CHUNKS_QUEUED_MAX: usize = 4;

/// Chunks a server reads ahead on one GetChunks stream before it waits for the
/// client to take them.
pub const GET_CHUNKS_AHEAD_MAX: usize = 2;

/// Most stripes one shard file may hold: a PutChunks stream that goes on longer is
/// refused. At the largest shard size this is far beyond any blob a registry stores.
pub const STRIPES_PER_SHARD_MAX: u64 = 1 << 24;

/// How long either end of a stream waits for the next message (or for room to send
/// one) before it gives up on the stream.
pub const CHUNK_IDLE_MAX: Duration = Duration::from_secs(30);

/// How long a unary call (Commit, Abort, Stat, Delete), the opening of a GetChunks
/// stream, or the final answer of a PutChunks stream may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a peer that does not serve raw GetChunks is read through gRPC before it
/// is asked again (it may have been upgraded).
pub const RAW_REPROBE_AFTER: Duration = Duration::from_secs(60);

/// How long dialing a peer may take before the call fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 keepalive: a peer that stops answering pings is dropped and redialed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(RPC_MESSAGE_BYTES_MAX > SHARD_BYTES_MAX as usize);
const _: () = assert!(PUT_CHUNKS_QUEUED_MAX >= 1 && GET_CHUNKS_AHEAD_MAX >= 1);
// A PutChunks stream buffers at most its queue of the largest chunks.
const _: () = assert!(PUT_CHUNKS_QUEUED_MAX * RPC_MESSAGE_BYTES_MAX <= 128 * 1024 * 1024);
