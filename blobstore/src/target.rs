//! `ShardTarget`: where the stripe writer puts one shard file, a disk of this node or a
//! disk of a peer reached through its shard service. The writer runs the same stripe
//! logic for both; a target only knows how to create its staging file, append a chunk,
//! make it durable, publish it and remove it. The local target calls the `shard`
//! functions directly; the remote one asks the peer's `ShardService` to call the same
//! functions there.

use std::sync::Arc;

use berth_types::{Digest, NodeId, ShardPlacement, UploadId};
use bytes::Bytes;

use crate::disk::{Disk, DiskFile};
use crate::error::BlobStoreError;
use crate::format::{self, ShardHeader};
use crate::rpc::{ShardClient, ShardRef, ShardRpcError, ShardUpload};
use crate::shard;
use crate::store::{StoreInner, blocking};

/// One shard file of an upload being written.
pub(crate) enum ShardTarget {
    Local(LocalTarget),
    Remote(RemoteTarget),
}

pub(crate) struct LocalTarget {
    inner: Arc<StoreInner>,
    disk: Arc<dyn Disk>,
    upload: UploadId,
    index: usize,
    /// The staging file, once created.
    file: Option<Arc<dyn DiskFile>>,
    /// The shard size of its header, once created: where each chunk goes.
    shard_bytes: u32,
}

pub(crate) struct RemoteTarget {
    client: ShardClient,
    shard: ShardRef,
    /// The PutChunks stream, from `create` until `sync`.
    put: Option<ShardUpload>,
}

impl ShardTarget {
    pub fn local(
        inner: Arc<StoreInner>,
        disk: Arc<dyn Disk>,
        upload: UploadId,
        index: usize,
    ) -> ShardTarget {
        ShardTarget::Local(LocalTarget {
            inner,
            disk,
            upload,
            index,
            file: None,
            shard_bytes: 0,
        })
    }

    pub fn remote(client: ShardClient, shard: ShardRef) -> ShardTarget {
        ShardTarget::Remote(RemoteTarget {
            client,
            shard,
            put: None,
        })
    }

    /// Whether the shard file is on a disk of this node.
    pub fn is_local(&self) -> bool {
        matches!(self, ShardTarget::Local(_))
    }

    /// Where the shard file is, for the layout.
    pub fn placement(&self, this_node: NodeId) -> ShardPlacement {
        match self {
            ShardTarget::Local(t) => ShardPlacement {
                node: this_node,
                disk: t.disk.id(),
            },
            ShardTarget::Remote(t) => ShardPlacement {
                node: t.client.node(),
                disk: t.shard.disk,
            },
        }
    }

    /// Creates (or truncates) the staging file and writes `header`.
    pub async fn create(&mut self, header: ShardHeader) -> Result<(), BlobStoreError> {
        match self {
            ShardTarget::Local(t) => {
                let (inner, disk, upload) = (t.inner.clone(), t.disk.clone(), t.upload);
                let file = blocking(move || {
                    shard::create_staging(&inner, disk.as_ref(), &upload, &header)
                })
                .await??;
                t.file = Some(Arc::from(file));
                t.shard_bytes = header.shard_bytes;
            }
            ShardTarget::Remote(t) => t.put = Some(t.client.put_chunks(&t.shard, &header)),
        }
        Ok(())
    }

    /// Writes the chunk of `stripe`: its checksum and `data`.
    pub async fn write_chunk(&mut self, stripe: u64, data: Bytes) -> Result<(), BlobStoreError> {
        match self {
            ShardTarget::Local(t) => {
                let (inner, disk, file) = (t.inner.clone(), t.disk.clone(), t.file());
                let path = format::staging_path(&t.upload, t.index);
                let shard_bytes = t.shard_bytes;
                blocking(move || {
                    let sum = format::chunk_checksum(stripe, &data);
                    shard::write_chunk(
                        &inner,
                        disk.as_ref(),
                        &path,
                        file.as_ref(),
                        shard_bytes,
                        stripe,
                        &sum,
                        &data,
                    )
                })
                .await?
            }
            ShardTarget::Remote(t) => {
                let (sum, data) =
                    blocking(move || (format::chunk_checksum(stripe, &data), data)).await?;
                let put = t.put.as_mut().expect("the staging file is created first");
                put.send(stripe, &sum, data).await.map_err(|e| t.failed(e))
            }
        }
    }

    /// Makes the staging file durable. For a peer this ends the PutChunks stream; the
    /// peer answers once it has fdatasynced the file.
    pub async fn sync(&mut self) -> Result<(), BlobStoreError> {
        match self {
            ShardTarget::Local(t) => {
                let (inner, disk, file) = (t.inner.clone(), t.disk.clone(), t.file());
                let path = format::staging_path(&t.upload, t.index);
                blocking(move || shard::sync(&inner, disk.as_ref(), &path, file.as_ref())).await?
            }
            ShardTarget::Remote(t) => {
                let put = t.put.take().expect("the staging file is created first");
                put.finish().await.map(drop).map_err(|e| t.failed(e))
            }
        }
    }

    /// Renames the durable staging file to its final path under `digest` and syncs
    /// the directories.
    pub async fn publish(&mut self, digest: &Digest) -> Result<(), BlobStoreError> {
        match self {
            ShardTarget::Local(t) => {
                let (inner, disk, upload, digest, index) = (
                    t.inner.clone(),
                    t.disk.clone(),
                    t.upload,
                    digest.clone(),
                    t.index,
                );
                t.file = None;
                blocking(move || shard::publish(&inner, disk.as_ref(), &upload, &digest, index))
                    .await?
            }
            ShardTarget::Remote(t) => t
                .client
                .commit(&t.shard, digest)
                .await
                .map_err(|e| t.failed(e)),
        }
    }

    /// Removes the staging file.
    pub async fn abort(&mut self) -> Result<(), BlobStoreError> {
        match self {
            ShardTarget::Local(t) => {
                t.file = None;
                let disk = t.disk.clone();
                let path = format::staging_path(&t.upload, t.index);
                blocking(move || shard::remove(disk.as_ref(), &path).map(drop)).await?
            }
            ShardTarget::Remote(t) => {
                t.end_stream().await;
                t.client
                    .abort(&t.shard)
                    .await
                    .map(drop)
                    .map_err(|e| t.failed(e))
            }
        }
    }

    /// Best-effort cleanup after a failed commit: the staging file and the final file
    /// the commit may already have published (nothing references it yet). Failures are
    /// logged; the sweeps remove what is left.
    pub async fn discard(&mut self, digest: &Digest) {
        match self {
            ShardTarget::Local(t) => {
                t.file = None;
                let (disk, upload, index, digest) =
                    (t.disk.clone(), t.upload, t.index, digest.clone());
                // A runtime shutting down leaves the files to the sweeps.
                let _ = blocking(move || {
                    let paths = [
                        format::staging_path(&upload, index),
                        format::final_path(&digest, &upload, index),
                    ];
                    for path in paths {
                        if let Err(e) = shard::remove(disk.as_ref(), &path) {
                            tracing::warn!(error = %e,
                                "could not remove a file of a failed commit; the sweeps will");
                        }
                    }
                })
                .await;
            }
            ShardTarget::Remote(t) => {
                t.end_stream().await;
                if let Err(e) = t.client.abort(&t.shard).await {
                    crate::rpc::log_cleanup_failure(t.client.node(), &t.shard, &e);
                }
                if let Err(e) = t.client.delete(&t.shard, digest).await {
                    crate::rpc::log_cleanup_failure(t.client.node(), &t.shard, &e);
                }
            }
        }
    }
}

impl LocalTarget {
    fn file(&self) -> Arc<dyn DiskFile> {
        self.file
            .clone()
            .expect("the staging file is created first")
    }
}

impl RemoteTarget {
    fn failed(&self, source: ShardRpcError) -> BlobStoreError {
        BlobStoreError::Peer {
            node: self.client.node(),
            shard: usize::from(self.shard.index),
            source,
        }
    }

    /// Ends an open PutChunks stream and waits for the peer's answer, so the peer is
    /// done with the staging file before it is removed. Its outcome does not matter:
    /// the file is about to go.
    async fn end_stream(&mut self) {
        if let Some(put) = self.put.take()
            && let Err(e) = put.finish().await
        {
            tracing::debug!(node = %self.client.node(), error = %e,
                "an abandoned shard stream ended with an error");
        }
    }
}
