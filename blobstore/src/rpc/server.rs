//! The serving end of the shard service: [`ShardService`] answers other nodes' calls
//! with this node's disks. Every step is the one a local write or read takes (the
//! `shard` module), so a shard file written for a peer is byte-for-byte what a local
//! write makes, lives in the same tree, and is swept by the same sweeps.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use berth_types::{DiskId, NodeId};
use futures::{Stream, stream};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::client::ShardRef;
use super::limits::{
    CHUNK_IDLE_MAX, GET_CHUNKS_AHEAD_MAX, RPC_MESSAGE_BYTES_MAX, STRIPES_PER_SHARD_MAX,
};
use super::pb::shards_server::{Shards, ShardsServer};
use super::pb::{self, put_chunks_request};
use super::raw::RawChunks;
use super::wire::{self, WireError};
use super::{WIRE_FORMAT_VERSION, error_chain};
use crate::disk::{Disk, DiskFile};
use crate::error::BlobStoreError;
use crate::format::{self, HEADER_BYTES, SHORT_SHARD_ALIGN};
use crate::shard::{self, Unusable};
use crate::store::{BlobStore, StoreInner, blocking};

/// Why this node refused or failed a shard call. Sent to the caller as a gRPC status.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("the request is addressed to node {addressed}, but this is node {this}")]
    WrongNode { addressed: NodeId, this: NodeId },
    #[error("malformed request")]
    Wire(#[from] WireError),
    #[error("this node has no disk {disk}")]
    NoDisk { disk: DiskId },
    #[error("a PutChunks stream must open with the shard it writes")]
    PutWithoutOpen,
    #[error("a PutChunks stream opened its shard a second time")]
    PutReopened,
    #[error("expected the chunk of stripe {expected}, got stripe {found}")]
    ChunkOutOfOrder { expected: u64, found: u64 },
    #[error(
        "the chunk of stripe {stripe} has {found} shard bytes; the header says {expected}, \
         and only the last chunk may be shorter (a non-zero multiple of 64)"
    )]
    ChunkLength {
        stripe: u64,
        expected: u32,
        found: usize,
    },
    #[error("the chunk of stripe {stripe} does not match its checksum")]
    ChunkChecksum { stripe: u64 },
    #[error("a shard file holds at most {max} stripes")]
    TooManyStripes { max: u64 },
    #[error("stripe range {start}..{end} is reversed")]
    Range { start: u64, end: u64 },
    #[error("no message arrived within {waited_ms} ms")]
    Stalled { waited_ms: u64 },
    #[error("the request stream broke off")]
    Broken(#[source] Status),
    #[error("the store failed")]
    Store(#[from] BlobStoreError),
    #[error("the shard file is unusable")]
    Unusable(#[from] Unusable),
    #[error("the chunk of stripe {stripe} cannot be served")]
    Chunk {
        stripe: u64,
        #[source]
        source: io::Error,
    },
}

impl Refusal {
    fn code(&self) -> Code {
        match self {
            Refusal::WrongNode { .. } | Refusal::Wire(WireError::Version { .. }) => {
                Code::FailedPrecondition
            }
            Refusal::Wire(_)
            | Refusal::PutWithoutOpen
            | Refusal::PutReopened
            | Refusal::ChunkOutOfOrder { .. }
            | Refusal::ChunkLength { .. }
            | Refusal::Range { .. } => Code::InvalidArgument,
            Refusal::NoDisk { .. } => Code::NotFound,
            Refusal::ChunkChecksum { .. } => Code::DataLoss,
            Refusal::TooManyStripes { .. } => Code::ResourceExhausted,
            Refusal::Stalled { .. } => Code::DeadlineExceeded,
            Refusal::Broken(status) => status.code(),
            Refusal::Store(BlobStoreError::DiskFull { .. }) => Code::ResourceExhausted,
            Refusal::Store(BlobStoreError::ShuttingDown) => Code::Unavailable,
            Refusal::Store(BlobStoreError::Io { source, .. })
            | Refusal::Unusable(Unusable::Io(source))
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Code::NotFound
            }
            Refusal::Unusable(Unusable::Header(_) | Unusable::Mismatch { .. }) => {
                Code::FailedPrecondition
            }
            Refusal::Chunk { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof => {
                Code::OutOfRange
            }
            Refusal::Store(_) | Refusal::Unusable(Unusable::Io(_)) | Refusal::Chunk { .. } => {
                Code::Internal
            }
        }
    }

    /// The status sent to the caller; failures of this node's disks are logged here.
    pub(super) fn into_status(self, call: &'static str) -> Status {
        let code = self.code();
        let message = error_chain(&self);
        match code {
            Code::Internal | Code::DataLoss | Code::ResourceExhausted => {
                tracing::warn!(call, error = %message, "shard call failed");
            }
            _ => tracing::debug!(call, error = %message, "shard call refused"),
        }
        Status::new(code, message)
    }
}

/// The shard service of this node over its `BlobStore`'s disks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShardService {
    inner: Arc<StoreInner>,
}

impl ShardService {
    /// Serves the disks of `store` to other nodes.
    pub fn new(store: &BlobStore) -> ShardService {
        ShardService {
            inner: store.inner().clone(),
        }
    }

    /// The tonic service to mount on the node's gRPC listener, with the message size
    /// limits of the shard service.
    pub fn into_server(self) -> ShardsServer<ShardService> {
        ShardsServer::new(self)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
    }

    /// The raw GetChunks service (`raw`) to mount beside `into_server` on the same
    /// listener.
    pub fn raw_chunks(&self) -> RawChunks {
        RawChunks::new(self.clone())
    }

    /// The shard a request names and the disk of this node it is on.
    fn addressed(&self, shard: Option<pb::ShardRef>) -> Result<(ShardRef, Arc<dyn Disk>), Refusal> {
        let (node, shard) = wire::parse_shard_ref(shard)?;
        if node != self.inner.node {
            return Err(Refusal::WrongNode {
                addressed: node,
                this: self.inner.node,
            });
        }
        let disk = self
            .inner
            .slot(shard.disk)
            .ok_or(Refusal::NoDisk { disk: shard.disk })?
            .disk
            .clone();
        Ok((shard, disk))
    }

    async fn put(
        &self,
        requests: &mut Streaming<pb::PutChunksRequest>,
    ) -> Result<pb::PutChunksResponse, Refusal> {
        let first = next_message(requests)
            .await?
            .ok_or(Refusal::PutWithoutOpen)?;
        wire::check_version(first.format_version)?;
        let Some(put_chunks_request::Body::Open(open)) = first.body else {
            return Err(Refusal::PutWithoutOpen);
        };
        let (shard, disk) = self.addressed(open.shard)?;
        let header = wire::parse_header(open.header, shard.index)?;
        let path = format::staging_path(&shard.upload, usize::from(shard.index));
        let file: Arc<dyn DiskFile> = {
            let (inner, disk) = (self.inner.clone(), disk.clone());
            blocking(move || {
                shard::create_staging(&inner, disk.as_ref(), &shard.upload, &header).map(Arc::from)
            })
            .await??
        };
        let mut stripes = 0u64;
        let (mut ended, mut written) = (false, HEADER_BYTES);
        while let Some(message) = next_message(requests).await? {
            wire::check_version(message.format_version)?;
            let chunk = match message.body {
                Some(put_chunks_request::Body::Chunk(chunk)) => chunk,
                Some(put_chunks_request::Body::Open(_)) => return Err(Refusal::PutReopened),
                None => return Err(WireError::Missing("chunk").into()),
            };
            let stripe = stripes;
            if stripe == STRIPES_PER_SHARD_MAX {
                return Err(Refusal::TooManyStripes {
                    max: STRIPES_PER_SHARD_MAX,
                });
            }
            if chunk.stripe != stripe {
                return Err(Refusal::ChunkOutOfOrder {
                    expected: stripe,
                    found: chunk.stripe,
                });
            }
            // Every chunk is `shard_bytes` long but the last, which may be shorter
            // (a non-zero multiple of `SHORT_SHARD_ALIGN`): after a short chunk the
            // stream must end.
            let len = chunk.data.len();
            let full = header.shard_bytes as usize;
            let short_ok = len > 0 && len < full && len.is_multiple_of(SHORT_SHARD_ALIGN as usize);
            if ended || (len != full && !short_ok) {
                return Err(Refusal::ChunkLength {
                    stripe,
                    expected: header.shard_bytes,
                    found: len,
                });
            }
            ended = len != full;
            written += format::CHECKSUM_BYTES + len as u64;
            let checksum = wire::parse_checksum(&chunk.checksum)?;
            let (inner, disk, file, path) =
                (self.inner.clone(), disk.clone(), file.clone(), path.clone());
            blocking(move || {
                // Verified before writing: a chunk damaged on the way never reaches a
                // shard file, where it would only be caught by a later read.
                if format::chunk_checksum(stripe, &chunk.data) != checksum {
                    inner.counters.checksum_failed();
                    return Err(Refusal::ChunkChecksum { stripe });
                }
                shard::write_chunk(
                    &inner,
                    disk.as_ref(),
                    &path,
                    file.as_ref(),
                    header.shard_bytes,
                    stripe,
                    &checksum,
                    &chunk.data,
                )?;
                Ok(())
            })
            .await??;
            stripes += 1;
        }
        let inner = self.inner.clone();
        blocking(move || shard::sync(&inner, disk.as_ref(), &path, file.as_ref())).await??;
        Ok(pb::PutChunksResponse {
            format_version: WIRE_FORMAT_VERSION,
            bytes_written: written,
            stripes,
        })
    }

    async fn commit(&self, request: pb::CommitRequest) -> Result<pb::CommitResponse, Refusal> {
        wire::check_version(request.format_version)?;
        let (shard, disk) = self.addressed(request.shard)?;
        let digest = wire::parse_digest(&request.digest)?;
        let inner = self.inner.clone();
        blocking(move || {
            let index = usize::from(shard.index);
            let path = format::staging_path(&shard.upload, index);
            let file = disk
                .open(&path)
                .map_err(|e| BlobStoreError::io(disk.id(), &path, e))?;
            shard::sync(&inner, disk.as_ref(), &path, file.as_ref())?;
            drop(file);
            shard::publish(&inner, disk.as_ref(), &shard.upload, &digest, index)
        })
        .await??;
        Ok(pb::CommitResponse {
            format_version: WIRE_FORMAT_VERSION,
        })
    }

    async fn abort(&self, request: pb::AbortRequest) -> Result<pb::AbortResponse, Refusal> {
        wire::check_version(request.format_version)?;
        let (shard, disk) = self.addressed(request.shard)?;
        let path = format::staging_path(&shard.upload, usize::from(shard.index));
        let removed = blocking(move || shard::remove(disk.as_ref(), &path)).await??;
        Ok(pb::AbortResponse {
            format_version: WIRE_FORMAT_VERSION,
            removed,
        })
    }

    async fn delete(&self, request: pb::DeleteRequest) -> Result<pb::DeleteResponse, Refusal> {
        wire::check_version(request.format_version)?;
        let (shard, disk) = self.addressed(request.shard)?;
        let digest = wire::parse_digest(&request.digest)?;
        let path = format::final_path(&digest, &shard.upload, usize::from(shard.index));
        let removed = blocking(move || shard::remove(disk.as_ref(), &path)).await??;
        Ok(pb::DeleteResponse {
            format_version: WIRE_FORMAT_VERSION,
            removed,
        })
    }

    async fn stat(&self, request: pb::StatRequest) -> Result<pb::StatResponse, Refusal> {
        wire::check_version(request.format_version)?;
        let (shard, disk) = self.addressed(request.shard)?;
        let digest = wire::parse_digest(&request.digest)?;
        let path = format::final_path(&digest, &shard.upload, usize::from(shard.index));
        let inner = self.inner.clone();
        blocking(move || {
            let missing = pb::StatResponse {
                format_version: WIRE_FORMAT_VERSION,
                ..pb::StatResponse::default()
            };
            let file = match disk.open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(missing),
                Err(e) => return Err(BlobStoreError::io(disk.id(), &path, e).into()),
            };
            let size_bytes = file
                .size()
                .map_err(|e| BlobStoreError::io(disk.id(), &path, e))?;
            let header = match shard::read_header(&inner, file.as_ref()) {
                Ok(header) => Some(header),
                Err(Unusable::Io(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                    return Err(Refusal::Unusable(Unusable::Io(e)));
                }
                Err(_) => None,
            };
            Ok(pb::StatResponse {
                format_version: WIRE_FORMAT_VERSION,
                exists: true,
                size_bytes,
                header: header.as_ref().map(wire::header),
                header_index: header.map_or(0, |h| u32::from(h.shard_index)),
            })
        })
        .await?
    }

    /// Opens the committed shard file a GetChunks request names and starts reading
    /// its chunks ahead; the receiver yields them in stripe order, and ends after the
    /// last one or after the first error. Both transports (the gRPC method and
    /// `raw`'s plain HTTP/2 body) serve from here.
    pub(super) async fn get(
        &self,
        request: pb::GetChunksRequest,
    ) -> Result<mpsc::Receiver<Result<ServedChunk, Status>>, Refusal> {
        wire::check_version(request.format_version)?;
        let (shard, disk) = self.addressed(request.shard)?;
        let digest = wire::parse_digest(&request.digest)?;
        let header = wire::parse_header(request.header, shard.index)?;
        let (start, end) = (request.stripe_start, request.stripe_end);
        if start > end {
            return Err(Refusal::Range { start, end });
        }
        let inner = self.inner.clone();
        let file: Arc<dyn DiskFile> = blocking(move || {
            shard::open_final(&inner, disk.as_ref(), &digest, &shard.upload, &header).map(Arc::from)
        })
        .await??;
        let (tx, rx) = mpsc::channel(GET_CHUNKS_AHEAD_MAX);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            for stripe in start..end {
                let (inner, file) = (inner.clone(), file.clone());
                let read = blocking(move || {
                    shard::read_chunk_unverified(&inner, file.as_ref(), header.shard_bytes, stripe)
                })
                .await;
                let item = match read {
                    Ok(Ok(chunk)) => Ok(ServedChunk { stripe, chunk }),
                    Ok(Err(source)) => {
                        Err(Refusal::Chunk { stripe, source }.into_status("GetChunks"))
                    }
                    Err(e) => Err(Refusal::Store(e).into_status("GetChunks")),
                };
                let failed = item.is_err();
                // A send fails once the caller has gone: nothing more to read for it.
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

/// The next message of a request stream; `None` when the caller ended it.
async fn next_message<T>(requests: &mut Streaming<T>) -> Result<Option<T>, Refusal> {
    match tokio::time::timeout(CHUNK_IDLE_MAX, requests.message()).await {
        Err(_) => Err(Refusal::Stalled {
            waited_ms: CHUNK_IDLE_MAX.as_millis() as u64,
        }),
        Ok(Err(status)) => Err(Refusal::Broken(status)),
        Ok(Ok(message)) => Ok(message),
    }
}

/// One chunk read for a GetChunks call, as stored (the caller verifies it).
pub(super) struct ServedChunk {
    pub stripe: u64,
    pub chunk: shard::Chunk,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GetChunksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Shards for ShardService {
    async fn put_chunks(
        &self,
        request: Request<Streaming<pb::PutChunksRequest>>,
    ) -> Result<Response<pb::PutChunksResponse>, Status> {
        let mut requests = request.into_inner();
        let response = self
            .put(&mut requests)
            .await
            .map_err(|r| r.into_status("PutChunks"))?;
        Ok(Response::new(response))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let response = ShardService::commit(self, request.into_inner())
            .await
            .map_err(|r| r.into_status("Commit"))?;
        Ok(Response::new(response))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let response = ShardService::abort(self, request.into_inner())
            .await
            .map_err(|r| r.into_status("Abort"))?;
        Ok(Response::new(response))
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        request: Request<pb::GetChunksRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let rx = self
            .get(request.into_inner())
            .await
            .map_err(|r| r.into_status("GetChunks"))?;
        let chunks = stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?.map(|served| pb::GetChunksResponse {
                format_version: WIRE_FORMAT_VERSION,
                chunk: Some(wire::chunk(
                    served.stripe,
                    &served.chunk.checksum,
                    served.chunk.shard,
                )),
            });
            Some((item, rx))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let response = ShardService::stat(self, request.into_inner())
            .await
            .map_err(|r| r.into_status("Stat"))?;
        Ok(Response::new(response))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let response = ShardService::delete(self, request.into_inner())
            .await
            .map_err(|r| r.into_status("Delete"))?;
        Ok(Response::new(response))
    }
}
