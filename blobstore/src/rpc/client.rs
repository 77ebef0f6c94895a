//! The calling end of the shard service: [`ShardClient`], one per peer node, and
//! [`ShardUpload`], one PutChunks stream in progress.
//!
//! Connections: one lazily dialed tonic channel (one HTTP/2 connection) per peer,
//! shared by clones of its client, redialed by itself after a failure. Every unary call
//! and the opening of every stream has a deadline; every stream gives up when the
//! other end goes quiet for `CHUNK_IDLE_MAX`. Chunks read from a peer are verified here
//! again, so corruption on the wire or in the peer's memory is caught too.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_types::{Digest, DiskId, NodeId, UploadId};
use bytes::Bytes;
use futures::{Stream, TryStreamExt, stream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use super::limits::{
    CALL_TIMEOUT, CHUNK_IDLE_MAX, CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    PUT_CHUNKS_QUEUED_MAX, RAW_REPROBE_AFTER, RPC_MESSAGE_BYTES_MAX,
};
use super::pb::shards_client::ShardsClient;
use super::pb::{self, put_chunks_request};
use super::wire::{self, WireError};
use super::{WIRE_FORMAT_VERSION, error_chain, raw};
use crate::format::{self, CHECKSUM_BYTES, ShardHeader};

/// One shard file of one upload on one disk of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardRef {
    pub disk: DiskId,
    pub upload: UploadId,
    /// `0..k` data, `k..k+m` parity.
    pub index: u8,
}

/// What a finished PutChunks stream left on the peer: a durable staging file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutSummary {
    /// Length of the staging file, header and chunks.
    pub bytes_written: u64,
    pub stripes: u64,
}

/// What a peer says about a committed shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardStat {
    Missing,
    Present {
        size_bytes: u64,
        /// `None` when the header does not decode.
        header: Option<ShardHeader>,
    },
}

/// Why a call to a peer's shard service failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardRpcError {
    #[error("peer address {addr:?} is not a valid endpoint")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the peer refused or failed the call ({code:?}): {message}")]
    Refused { code: Code, message: String },
    #[error("the shard file does not exist on the peer: {message}")]
    NotFound { message: String },
    #[error("the chunk of stripe {stripe} is corrupt")]
    Corrupt { stripe: u64 },
    #[error("expected the chunk of stripe {expected}, the peer sent stripe {found}")]
    OutOfOrder { expected: u64, found: u64 },
    #[error(
        "the chunk of stripe {stripe} has {found} shard bytes, the header allows 1 to {expected}"
    )]
    ChunkLength {
        stripe: u64,
        expected: u32,
        found: usize,
    },
    #[error("the stream ended before the chunk of stripe {stripe}")]
    Truncated { stripe: u64 },
    #[error("{chunks} chunks were sent but the peer wrote {written}")]
    Incomplete { chunks: u64, written: u64 },
    #[error("the peer answered a PutChunks stream before it ended")]
    EndedEarly,
    #[error("the peer did not answer within {waited_ms} ms")]
    Stalled { waited_ms: u64 },
    #[error("the peer sent a malformed message")]
    Malformed(#[from] WireError),
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

impl ShardRpcError {
    pub(super) fn stalled(waited: Duration) -> ShardRpcError {
        ShardRpcError::Stalled {
            waited_ms: waited.as_millis() as u64,
        }
    }
}

impl From<Status> for ShardRpcError {
    fn from(status: Status) -> ShardRpcError {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => ShardRpcError::NotFound { message },
            code => ShardRpcError::Refused { code, message },
        }
    }
}

/// Awaits `fut` for at most `limit`.
pub(super) async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, ShardRpcError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ShardRpcError::stalled(limit)),
    }
}

/// The shard service of one peer node. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct ShardClient {
    node: NodeId,
    /// The connection: gRPC calls (`grpc`) and raw GetChunks calls (`raw`).
    channel: Channel,
    /// Whether GetChunks goes over the raw path or the gRPC method.
    raw: Arc<RawPath>,
}

/// Whether a peer's GetChunks calls take the raw path. A peer that answered that it
/// does not serve it (a build without it, during a rolling upgrade) is read through
/// the gRPC method for `RAW_REPROBE_AFTER`, then asked again, so a peer upgraded in
/// the meantime is read raw again without this node restarting.
#[derive(Debug, Default)]
struct RawPath {
    /// Until when calls go through gRPC; `None` while the peer serves the raw path.
    grpc_until: Mutex<Option<Instant>>,
}

impl RawPath {
    fn usable(&self, now: Instant) -> bool {
        self.lock().is_none_or(|until| now >= until)
    }

    /// The peer does not serve the raw path; true when it did (or was not asked) so
    /// far, which is worth a log line.
    fn unsupported(&self, now: Instant) -> bool {
        self.lock().replace(now + RAW_REPROBE_AFTER).is_none()
    }

    /// The peer served the raw path; true when it had not before (it was upgraded).
    fn supported(&self) -> bool {
        self.lock().take().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.grpc_until.lock().expect("raw path lock poisoned")
    }
}

impl ShardClient {
    /// A client of the shard service of `node` at `addr` (`host:port`). Dials on first
    /// use, not here, so a peer that is down costs nothing until it is needed.
    pub fn connect_lazy(node: NodeId, addr: &str) -> Result<ShardClient, ShardRpcError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|source| {
            ShardRpcError::Address {
                addr: addr.to_owned(),
                source,
            }
        })?;
        Ok(ShardClient::from_endpoint(
            node,
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
        ))
    }

    /// A client for `node` over `endpoint` (built by the caller with its connection
    /// settings, e.g. cluster TLS), connected on first use.
    pub fn from_endpoint(node: NodeId, endpoint: Endpoint) -> ShardClient {
        ShardClient {
            node,
            channel: endpoint.connect_lazy(),
            raw: Arc::default(),
        }
    }

    /// The gRPC client of the shard service over this peer's connection.
    fn grpc(&self) -> ShardsClient<Channel> {
        ShardsClient::new(self.channel.clone())
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
    }

    /// The node this client calls.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Opens a PutChunks stream that writes shard `shard` into staging on the peer,
    /// with `header` (whose shard index must be `shard.index`).
    pub fn put_chunks(&self, shard: &ShardRef, header: &ShardHeader) -> ShardUpload {
        assert_eq!(
            header.shard_index, shard.index,
            "a shard file's header names its own index"
        );
        let (tx, rx) = mpsc::channel(PUT_CHUNKS_QUEUED_MAX);
        let open = pb::PutChunksRequest {
            format_version: WIRE_FORMAT_VERSION,
            body: Some(put_chunks_request::Body::Open(pb::PutOpen {
                shard: Some(wire::shard_ref(self.node, shard)),
                header: Some(wire::header(header)),
            })),
        };
        tx.try_send(open)
            .expect("a new channel has room for the first message");
        let requests = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|message| (message, rx))
        });
        let mut client = self.grpc();
        let task = tokio::spawn(async move {
            client
                .put_chunks(Request::new(requests))
                .await
                .map(tonic::Response::into_inner)
        });
        ShardUpload {
            tx: Some(tx),
            task: AbortOnDrop(task),
            sent: 0,
            answered: false,
        }
    }

    /// Commits the staging file of `shard` under `digest` on the peer: fdatasync,
    /// rename to the final path, fsync of the directories. Returns once it is durable.
    pub async fn commit(&self, shard: &ShardRef, digest: &Digest) -> Result<(), ShardRpcError> {
        let request = pb::CommitRequest {
            format_version: WIRE_FORMAT_VERSION,
            shard: Some(wire::shard_ref(self.node, shard)),
            digest: digest.to_string(),
        };
        let mut client = self.grpc();
        let response = within(CALL_TIMEOUT, client.commit(request)).await?;
        wire::check_version(response.into_inner().format_version)?;
        Ok(())
    }

    /// Removes the staging file of `shard` on the peer; returns whether one was there.
    pub async fn abort(&self, shard: &ShardRef) -> Result<bool, ShardRpcError> {
        let request = pb::AbortRequest {
            format_version: WIRE_FORMAT_VERSION,
            shard: Some(wire::shard_ref(self.node, shard)),
        };
        let mut client = self.grpc();
        let response = within(CALL_TIMEOUT, client.abort(request))
            .await?
            .into_inner();
        wire::check_version(response.format_version)?;
        Ok(response.removed)
    }

    /// Removes the committed file of `shard` under `digest`; returns whether one was
    /// there.
    pub async fn delete(&self, shard: &ShardRef, digest: &Digest) -> Result<bool, ShardRpcError> {
        let request = pb::DeleteRequest {
            format_version: WIRE_FORMAT_VERSION,
            shard: Some(wire::shard_ref(self.node, shard)),
            digest: digest.to_string(),
        };
        let mut client = self.grpc();
        let response = within(CALL_TIMEOUT, client.delete(request))
            .await?
            .into_inner();
        wire::check_version(response.format_version)?;
        Ok(response.removed)
    }

    /// Whether the committed file of `shard` under `digest` exists, its size and header.
    pub async fn stat(
        &self,
        shard: &ShardRef,
        digest: &Digest,
    ) -> Result<ShardStat, ShardRpcError> {
        let request = pb::StatRequest {
            format_version: WIRE_FORMAT_VERSION,
            shard: Some(wire::shard_ref(self.node, shard)),
            digest: digest.to_string(),
        };
        let mut client = self.grpc();
        let response = within(CALL_TIMEOUT, client.stat(request))
            .await?
            .into_inner();
        wire::check_version(response.format_version)?;
        if !response.exists {
            return Ok(ShardStat::Missing);
        }
        let header = match response.header {
            None => None,
            Some(h) => {
                let index = u8::try_from(response.header_index)
                    .map_err(|_| WireError::Index(response.header_index))?;
                Some(wire::parse_header(Some(h), index)?)
            }
        };
        Ok(ShardStat::Present {
            size_bytes: response.size_bytes,
            header,
        })
    }

    /// Streams the shard bytes of stripes `stripes` of the committed file of `shard`
    /// under `digest`, whose header must be `header` (with shard index `shard.index`).
    /// Yields one item per stripe, in order; every chunk's checksum is verified. The
    /// first error ends the stream: `Corrupt { stripe }` when that stripe's chunk
    /// failed its check on the peer or here.
    pub fn get_chunks(
        &self,
        shard: &ShardRef,
        digest: &Digest,
        header: &ShardHeader,
        stripes: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, ShardRpcError>> + Send + 'static {
        assert_eq!(
            header.shard_index, shard.index,
            "a shard file's header names its own index"
        );
        let request = pb::GetChunksRequest {
            format_version: WIRE_FORMAT_VERSION,
            shard: Some(wire::shard_ref(self.node, shard)),
            digest: digest.to_string(),
            header: Some(wire::header(header)),
            stripe_start: stripes.start,
            stripe_end: stripes.end,
        };
        let this = self.clone();
        let shard_bytes = header.shard_bytes;
        let empty = stripes.is_empty();
        let open = async move {
            if empty {
                return Ok::<_, ShardRpcError>(None);
            }
            Ok(Some(this.open_chunks(request).await?))
        };
        stream::once(open)
            .map_ok(move |chunks| {
                let state = chunks.map(|chunks| (chunks, stripes.start));
                stream::unfold(state, move |state| {
                    next_chunk(state, stripes.end, shard_bytes)
                })
            })
            .try_flatten()
    }

    /// Opens a GetChunks call: the raw HTTP/2 body, or the gRPC method on a peer
    /// that does not serve that.
    async fn open_chunks(&self, request: pb::GetChunksRequest) -> Result<Incoming, ShardRpcError> {
        if self.raw.usable(Instant::now()) {
            match raw::open(&self.channel, &request).await? {
                raw::Opened::Records(records) => {
                    if self.raw.supported() {
                        tracing::info!(node = %self.node, "the peer serves raw GetChunks now");
                    }
                    return Ok(Incoming::Raw(records));
                }
                raw::Opened::Unsupported => {
                    if self.raw.unsupported(Instant::now()) {
                        tracing::info!(node = %self.node, "the peer does not serve raw GetChunks; reading it through gRPC");
                    }
                }
            }
        }
        let mut client = self.grpc();
        let response = within(CALL_TIMEOUT, client.get_chunks(request)).await?;
        Ok(Incoming::Grpc(response.into_inner()))
    }
}

/// The response of a GetChunks call being read.
enum Incoming {
    Raw(raw::Records),
    Grpc(Streaming<pb::GetChunksResponse>),
}

impl Incoming {
    /// The next chunk as received, expected to be that of `stripe`.
    async fn next(
        &mut self,
        stripe: u64,
        shard_bytes: u32,
    ) -> Result<raw::Received, ShardRpcError> {
        let chunks = match self {
            Incoming::Raw(records) => return records.next(stripe, shard_bytes).await,
            Incoming::Grpc(chunks) => chunks,
        };
        let response = match tokio::time::timeout(CHUNK_IDLE_MAX, chunks.message()).await {
            Err(_) => return Err(ShardRpcError::stalled(CHUNK_IDLE_MAX)),
            Ok(Err(status)) => return Err(ended_by(status, stripe)),
            Ok(Ok(None)) => return Err(ShardRpcError::Truncated { stripe }),
            Ok(Ok(Some(response))) => response,
        };
        received(response)
    }
}

/// The chunk a gRPC GetChunks message carries, once its version and checksum parse.
fn received(response: pb::GetChunksResponse) -> Result<raw::Received, ShardRpcError> {
    wire::check_version(response.format_version)?;
    let chunk = response.chunk.ok_or(WireError::Missing("chunk"))?;
    Ok(raw::Received {
        stripe: chunk.stripe,
        checksum: wire::parse_checksum(&chunk.checksum)?,
        data: chunk.data,
    })
}

/// The error of a GetChunks stream that the peer ended with `status` before the chunk
/// of `stripe`: `DATA_LOSS` names that stripe's chunk as corrupt.
pub(super) fn ended_by(status: Status, stripe: u64) -> ShardRpcError {
    match status.code() {
        Code::DataLoss => ShardRpcError::Corrupt { stripe },
        _ => status.into(),
    }
}

/// The next verified chunk of a GetChunks stream, and the stream's state after it:
/// `None` once the range is done or an error ended it.
async fn next_chunk(
    state: Option<(Incoming, u64)>,
    end: u64,
    shard_bytes: u32,
) -> Option<(Result<Bytes, ShardRpcError>, Option<(Incoming, u64)>)> {
    let (mut chunks, stripe) = state?;
    if stripe == end {
        return None;
    }
    let item = match chunks.next(stripe, shard_bytes).await {
        Ok(received) => verify(received, stripe, shard_bytes).await,
        Err(e) => Err(e),
    };
    match item {
        Ok(shard) => Some((Ok(shard), Some((chunks, stripe + 1)))),
        Err(e) => Some((Err(e), None)),
    }
}

/// Checks that a received chunk is the one of `stripe`, has the right length and
/// matches its checksum. Hashing runs on the blocking pool.
async fn verify(
    received: raw::Received,
    stripe: u64,
    shard_bytes: u32,
) -> Result<Bytes, ShardRpcError> {
    let raw::Received {
        stripe: found,
        checksum,
        data,
    } = received;
    if found != stripe {
        return Err(ShardRpcError::OutOfOrder {
            expected: stripe,
            found,
        });
    }
    // The last chunk of a blob may be short; the reader, which knows the blob size,
    // checks the exact length.
    if data.is_empty() || data.len() > shard_bytes as usize {
        return Err(ShardRpcError::ChunkLength {
            stripe,
            expected: shard_bytes,
            found: data.len(),
        });
    }
    let good = match tokio::task::spawn_blocking(move || {
        (format::chunk_checksum(stripe, &data) == checksum, data)
    })
    .await
    {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return Err(ShardRpcError::ShuttingDown),
    };
    match good {
        (true, data) => Ok(data),
        (false, _) => Err(ShardRpcError::Corrupt { stripe }),
    }
}

/// A spawned call that is cancelled when its handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One PutChunks stream to a peer. Send the chunks of stripes 0, 1, 2, … in order,
/// then `finish`. Dropping it without `finish` cancels the stream: the peer keeps only
/// a staging file, which its staging sweep removes.
pub struct ShardUpload {
    tx: Option<mpsc::Sender<pb::PutChunksRequest>>,
    task: AbortOnDrop<Result<pb::PutChunksResponse, Status>>,
    sent: u64,
    /// The call's answer has been taken (a finished task cannot be polled again).
    answered: bool,
}

impl std::fmt::Debug for ShardUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardUpload")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl ShardUpload {
    /// Queues the chunk of `stripe`, whose checksum is `checksum`. Waits while the
    /// queue is full, so a slow peer slows the writer down.
    pub async fn send(
        &mut self,
        stripe: u64,
        checksum: &[u8; CHECKSUM_BYTES as usize],
        shard: Bytes,
    ) -> Result<(), ShardRpcError> {
        let tx = self.tx.as_ref().ok_or(ShardRpcError::EndedEarly)?;
        let message = pb::PutChunksRequest {
            format_version: WIRE_FORMAT_VERSION,
            body: Some(put_chunks_request::Body::Chunk(wire::chunk(
                stripe, checksum, shard,
            ))),
        };
        match tokio::time::timeout(CHUNK_IDLE_MAX, tx.send(message)).await {
            Err(_) => Err(ShardRpcError::stalled(CHUNK_IDLE_MAX)),
            Ok(Ok(())) => {
                self.sent += 1;
                Ok(())
            }
            // The call is over, so the peer has answered: its answer says why.
            Ok(Err(_)) => {
                self.tx = None;
                self.answer().await?;
                Err(ShardRpcError::EndedEarly)
            }
        }
    }

    /// Ends the stream and waits for the peer to make the staging file durable.
    pub async fn finish(mut self) -> Result<PutSummary, ShardRpcError> {
        self.tx = None;
        let answer = self.answer().await?;
        wire::check_version(answer.format_version)?;
        if answer.stripes != self.sent {
            return Err(ShardRpcError::Incomplete {
                chunks: self.sent,
                written: answer.stripes,
            });
        }
        Ok(PutSummary {
            bytes_written: answer.bytes_written,
            stripes: answer.stripes,
        })
    }

    /// The peer's answer to the call. Only the first call after the answer came gets
    /// it; a later one (`finish` after a failed `send` took it) gets `EndedEarly`.
    async fn answer(&mut self) -> Result<pb::PutChunksResponse, ShardRpcError> {
        if self.answered {
            return Err(ShardRpcError::EndedEarly);
        }
        let answer = tokio::time::timeout(CALL_TIMEOUT, &mut self.task.0).await;
        self.answered = answer.is_ok();
        match answer {
            Err(_) => Err(ShardRpcError::stalled(CALL_TIMEOUT)),
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(_)) => Err(ShardRpcError::ShuttingDown),
        }
    }
}

/// Logs a failure of a best-effort call (cleanup after a failed write).
pub(crate) fn log_cleanup_failure(node: NodeId, shard: &ShardRef, e: &ShardRpcError) {
    tracing::warn!(%node, disk = %shard.disk, upload = %shard.upload, index = shard.index,
        error = %error_chain(e), "could not remove a shard file on a peer; its sweeps will");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stripe: u64, data: &[u8]) -> raw::Received {
        raw::Received {
            stripe,
            checksum: format::chunk_checksum(stripe, data),
            data: Bytes::copy_from_slice(data),
        }
    }

    /// A peer without the raw path is read through gRPC for a while, then asked again;
    /// once it serves the raw path, it is read raw until it says otherwise.
    #[test]
    fn a_peer_without_the_raw_path_is_asked_again_later() {
        let path = RawPath::default();
        let t0 = Instant::now();
        assert!(path.usable(t0));
        assert!(!path.supported(), "serving raw from the start is not news");
        assert!(path.unsupported(t0), "the first refusal is logged");
        assert!(!path.usable(t0 + RAW_REPROBE_AFTER / 2));
        assert!(path.usable(t0 + RAW_REPROBE_AFTER));
        let later = t0 + RAW_REPROBE_AFTER;
        assert!(
            !path.unsupported(later),
            "a refusal on a re-probe is not logged again"
        );
        assert!(!path.usable(later + RAW_REPROBE_AFTER / 2));
        assert!(path.usable(later + RAW_REPROBE_AFTER));
        assert!(path.supported(), "an upgraded peer is logged once");
        assert!(!path.supported());
        assert!(
            path.usable(later + RAW_REPROBE_AFTER / 2),
            "raw again at once"
        );
    }

    /// The client checks every chunk again: bytes changed after the peer verified
    /// them, a chunk of the wrong stripe, or longer than the header's shards never pass.
    #[tokio::test]
    async fn chunks_are_verified_again_on_arrival() {
        assert_eq!(
            verify(chunk(3, &[7; 16]), 3, 16).await.unwrap(),
            vec![7u8; 16]
        );
        let altered = raw::Received {
            data: Bytes::from(vec![8u8; 16]),
            ..chunk(3, &[7; 16])
        };
        assert!(matches!(
            verify(altered, 3, 16).await,
            Err(ShardRpcError::Corrupt { stripe: 3 })
        ));
        assert!(matches!(
            verify(chunk(3, &[7; 16]), 4, 16).await,
            Err(ShardRpcError::OutOfOrder {
                expected: 4,
                found: 3
            })
        ));
        // A chunk shorter than the header's shard size may be a blob's short last
        // chunk (the reader checks the exact length); a longer one never is.
        assert_eq!(
            verify(chunk(3, &[7; 16]), 3, 32).await.unwrap(),
            vec![7u8; 16]
        );
        assert!(matches!(
            verify(chunk(3, &[7; 16]), 3, 8).await,
            Err(ShardRpcError::ChunkLength { found: 16, .. })
        ));
    }

    /// A gRPC GetChunks message of a newer wire format, or without a chunk, is refused
    /// before its chunk is looked at; a current one yields its chunk as sent.
    #[test]
    fn grpc_chunks_of_another_wire_format_are_refused() {
        let data = Bytes::from_static(&[7; 16]);
        let current = pb::GetChunksResponse {
            format_version: WIRE_FORMAT_VERSION,
            chunk: Some(wire::chunk(
                3,
                &format::chunk_checksum(3, &data),
                data.clone(),
            )),
        };
        let got = received(current.clone()).unwrap();
        assert_eq!((got.stripe, got.data), (3, data));
        let future = pb::GetChunksResponse {
            format_version: WIRE_FORMAT_VERSION + 1,
            ..current
        };
        assert!(matches!(
            received(future),
            Err(ShardRpcError::Malformed(WireError::Version { .. }))
        ));
        let empty = pb::GetChunksResponse {
            format_version: WIRE_FORMAT_VERSION,
            chunk: None,
        };
        assert!(matches!(
            received(empty),
            Err(ShardRpcError::Malformed(WireError::Missing("chunk")))
        ));
    }
}
