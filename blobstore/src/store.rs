//! `BlobStore`, the handle the rest of berth uses: it owns this node's disks, picks the
//! disks of a new upload, opens writers and readers, deletes blobs, sweeps leftovers,
//! and reports disk state and counters. Blocking disk calls run on tokio's blocking
//! pool.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use berth_types::limits::{SHARD_BYTES_DEFAULT, SHARD_BYTES_MAX};
use berth_types::{Digest, DiskId, EcProfile, NodeId, ShardPlacement, StripedLayout, UploadId};
use bytes::Bytes;
use futures::Stream;

use crate::buffers::ChunkBuffers;
use crate::disk::Disk;
use crate::error::BlobStoreError;
use crate::format::{self, BLOBS_DIR, DIGEST_ALGORITHMS, STAGING_DIR};
use crate::placement::{self, Candidate, DiskState};
use crate::reader;
use crate::rpc::{ShardClient, ShardRef};
use crate::scrub::Pacer;
use crate::target::ShardTarget;
use crate::writer::StripeWriter;

/// A disk is full for placement once its free space drops below this many chunks:
/// room for the shard files of uploads already in flight, and for the filesystem.
pub const FULL_RESERVE_CHUNKS: u64 = 64;

/// How long a read waits for a needed shard chunk before it also reads other shards of
/// the stripe (see `StoreConfig::read_hedge`). A healthy chunk of 1 MiB takes a few
/// milliseconds from a local disk or a peer on the same network and some tens of
/// milliseconds from a busy spinning disk or across a loaded 1 Gbit/s link; 300 ms
/// is well beyond that, so a healthy cluster rarely pays the extra reads and the
/// decoding, while a hung peer costs a read 300 ms once instead of the shard
/// service's 30 s timeout (the source is then skipped for the rest of the read).
pub const READ_HEDGE_DEFAULT: Duration = Duration::from_millis(300);

/// How this node stores new blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    pub profile: EcProfile,
    /// Size of one shard of one stripe; even, because the codec works on 16-bit words.
    pub shard_bytes: u32,
    /// How long a read waits for a needed shard chunk before it reads further shards
    /// of the stripe to decode it from, and goes on without it; `None`: a read waits
    /// for every needed chunk until it arrives or its source fails.
    pub read_hedge: Option<Duration>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            profile: EcProfile::SINGLE,
            shard_bytes: SHARD_BYTES_DEFAULT,
            read_hedge: Some(READ_HEDGE_DEFAULT),
        }
    }
}

/// What an operator sees of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats {
    pub id: DiskId,
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub state: DiskState,
}

/// Monotonic counters of the store, for metrics.
#[derive(Debug, Default)]
pub struct StoreCounters {
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    checksum_failures: AtomicU64,
    shards_unavailable: AtomicU64,
    reconstructions: AtomicU64,
    hedged_reads: AtomicU64,
    shared_reads: AtomicU64,
}

impl StoreCounters {
    /// Bytes written to shard files, headers and checksums and parity included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes read from shard files, checksums included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Chunks or headers whose checksum did not match.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }

    /// Shard reads that found no file, a short file, or an I/O error.
    pub fn shards_unavailable(&self) -> u64 {
        self.shards_unavailable.load(Ordering::Relaxed)
    }

    /// Stripes that were rebuilt from parity to serve a read.
    pub fn reconstructions(&self) -> u64 {
        self.reconstructions.load(Ordering::Relaxed)
    }

    /// Stripe reads that went around a slow shard: another shard was read because a
    /// needed chunk missed the hedge threshold, or its source already had in an
    /// earlier stripe of the read.
    pub fn hedged_reads(&self) -> u64 {
        self.hedged_reads.load(Ordering::Relaxed)
    }

    /// Chunk reads served from the buffer of another read that held the same chunk,
    /// without reading the disk.
    pub fn shared_reads(&self) -> u64 {
        self.shared_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn add_written(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn checksum_failed(&self) {
        self.checksum_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shard_unavailable(&self) {
        self.shards_unavailable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconstructed(&self) {
        self.reconstructions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hedged(&self) {
        self.hedged_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shared_read(&self) {
        self.shared_reads.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct DiskSlot {
    pub disk: Arc<dyn Disk>,
    /// Set when a write-path operation fails for a reason other than space; the disk
    /// takes no new shards until the store is reopened.
    failed: AtomicBool,
}

/// A shard file that a read found damaged: missing, unreadable, with a bad header, or
/// with a chunk whose checksum failed (on this node, or reported by the peer holding
/// it). The read went on from parity; repair should rewrite the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedShard {
    pub digest: Digest,
    pub upload: UploadId,
    pub index: usize,
}

/// Damaged shards remembered between two repair passes; more are dropped (the next
/// read of the blob finds them again).
const DAMAGED_SHARDS_MAX: usize = 10_000;

#[derive(Debug)]
pub(crate) struct StoreInner {
    pub node: NodeId,
    pub disks: Vec<DiskSlot>,
    pub cfg: StoreConfig,
    pub damaged: std::sync::Mutex<Vec<DamagedShard>>,
    pub counters: StoreCounters,
    /// Chunk read buffers, reused across reads.
    pub buffers: Arc<ChunkBuffers>,
}

impl StoreInner {
    /// Remembers a damaged shard for repair.
    pub fn damaged(&self, digest: &Digest, upload: UploadId, index: usize) {
        let mut damaged = self.damaged.lock().expect("damaged shards lock poisoned");
        let shard = DamagedShard {
            digest: digest.clone(),
            upload,
            index,
        };
        if damaged.len() < DAMAGED_SHARDS_MAX && !damaged.contains(&shard) {
            damaged.push(shard);
        }
    }

    pub fn slot(&self, disk: DiskId) -> Option<&DiskSlot> {
        self.disks.iter().find(|s| s.disk.id() == disk)
    }

    /// Converts an error of a write-path operation, and takes the disk out of
    /// placement if the error says it is broken rather than full.
    pub fn write_error(&self, disk: DiskId, path: &Path, e: io::Error) -> BlobStoreError {
        let err = BlobStoreError::io(disk, path, e);
        if let BlobStoreError::Io { source, .. } = &err {
            tracing::warn!(%disk, path = %path.display(), error = %source, "disk write failed; disk taken out of placement");
            if let Some(slot) = self.slot(disk) {
                slot.failed.store(true, Ordering::Relaxed);
            }
        }
        err
    }

    fn stats(&self, slot: &DiskSlot) -> DiskStats {
        let disk = &slot.disk;
        let reserve = FULL_RESERVE_CHUNKS * format::chunk_bytes(self.cfg.shard_bytes);
        let space = disk.total_bytes().and_then(|t| Ok((t, disk.free_bytes()?)));
        let (total_bytes, free_bytes, state) = match space {
            Err(e) => {
                tracing::warn!(disk = %disk.id(), error = %e, "disk cannot report its space");
                (0, 0, DiskState::Failed)
            }
            Ok((total, free)) => {
                let state = if slot.failed.load(Ordering::Relaxed) {
                    DiskState::Failed
                } else if free < reserve {
                    DiskState::Full
                } else {
                    DiskState::Active
                };
                (total, free, state)
            }
        };
        DiskStats {
            id: disk.id(),
            path: disk.location(),
            total_bytes,
            free_bytes,
            state,
        }
    }
}

/// Runs a blocking disk operation on tokio's blocking pool. A panic in it is a bug and
/// is resumed here; the only other way it can fail is a runtime shutting down.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, BlobStoreError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(BlobStoreError::ShuttingDown),
    }
}

/// How this node finds the shard service of another node.
#[derive(Clone)]
pub(crate) struct Peers(Arc<dyn Fn(NodeId) -> Option<ShardClient> + Send + Sync>);

impl Peers {
    pub fn client(&self, node: NodeId) -> Option<ShardClient> {
        (self.0)(node)
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peers(..)")
    }
}

/// The erasure-coded blob store of this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<StoreInner>,
    /// Reaches shards that layouts place on other nodes; without it they are
    /// unavailable to this node.
    peers: Option<Peers>,
}

impl BlobStore {
    /// Opens the store over `disks`. Creates and syncs the `staging` and `blobs`
    /// directories of every disk, so it blocks: call it at startup.
    pub fn open(
        node: NodeId,
        disks: Vec<Arc<dyn Disk>>,
        cfg: StoreConfig,
    ) -> Result<BlobStore, BlobStoreError> {
        if cfg.shard_bytes == 0
            || !cfg.shard_bytes.is_multiple_of(2)
            || cfg.shard_bytes > SHARD_BYTES_MAX
        {
            return Err(BlobStoreError::InvalidShardBytes {
                shard_bytes: cfg.shard_bytes,
            });
        }
        if cfg.profile.width() > disks.len() {
            return Err(BlobStoreError::NotEnoughDisks {
                profile: cfg.profile,
                needed: cfg.profile.width(),
                available: disks.len(),
            });
        }
        for (i, d) in disks.iter().enumerate() {
            if disks[..i].iter().any(|o| o.id() == d.id()) {
                return Err(BlobStoreError::DuplicateDisk { disk: d.id() });
            }
        }
        for disk in &disks {
            prepare_tree(disk.as_ref())?;
        }
        Ok(BlobStore {
            inner: Arc::new(StoreInner {
                node,
                disks: disks
                    .into_iter()
                    .map(|disk| DiskSlot {
                        disk,
                        failed: AtomicBool::new(false),
                    })
                    .collect(),
                cfg,
                counters: StoreCounters::default(),
                damaged: std::sync::Mutex::default(),
                buffers: Arc::default(),
            }),
            peers: None,
        })
    }

    /// This store, sharing its disks and counters, that reaches shards on other nodes
    /// through `resolver`: it returns the shard client of a node, or `None` for a node
    /// this one cannot reach now. Reads use it for layout shards on other nodes,
    /// `begin_at` for placements on other nodes, `delete` to remove them.
    pub fn with_peers(
        &self,
        resolver: impl Fn(NodeId) -> Option<ShardClient> + Send + Sync + 'static,
    ) -> BlobStore {
        BlobStore {
            inner: self.inner.clone(),
            peers: Some(Peers(Arc::new(resolver))),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<StoreInner> {
        &self.inner
    }

    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    pub fn profile(&self) -> EcProfile {
        self.inner.cfg.profile
    }

    /// Starts writing the blob of `upload` onto the disks placement picks for it.
    /// Asks each disk for its free space (a statvfs), which does not wait on I/O.
    /// Fails with `DiskFull` when disks short of space are what keeps the profile from
    /// fitting, and with `NotEnoughDisks` when failed disks are.
    pub fn begin(&self, upload: UploadId) -> Result<StripeWriter, BlobStoreError> {
        let profile = self.inner.cfg.profile;
        let candidates: Vec<Candidate> = self
            .inner
            .disks
            .iter()
            .map(|slot| {
                let s = self.inner.stats(slot);
                Candidate {
                    disk: s.id,
                    free_bytes: s.free_bytes,
                    state: s.state,
                }
            })
            .collect();
        let chosen = placement::place(upload.to_string().as_bytes(), &candidates, profile.width())
            .map_err(|e| {
                // Short only because disks are out of space: that is "storage full" to a
                // client, not a broken node.
                let full: Vec<DiskId> = candidates
                    .iter()
                    .filter(|c| c.state == DiskState::Full)
                    .map(|c| c.disk)
                    .collect();
                match full.first() {
                    Some(&disk) if e.available + full.len() >= e.needed => {
                        BlobStoreError::DiskFull { disk }
                    }
                    _ => BlobStoreError::NotEnoughDisks {
                        profile,
                        needed: e.needed,
                        available: e.available,
                    },
                }
            })?;
        let node = self.inner.node;
        let targets = chosen
            .iter()
            .enumerate()
            .map(|(i, &disk)| self.target(upload, i, ShardPlacement { node, disk }))
            .collect::<Result<Vec<_>, BlobStoreError>>()?;
        Ok(StripeWriter::new(
            self.inner.clone(),
            upload,
            profile,
            targets,
        ))
    }

    /// Starts writing the blob of `upload` with `profile` onto the given placements,
    /// one per shard index (`k + m`, all distinct): disks of this node are written directly, disks of
    /// other nodes through their shard service (see `with_peers`). The writer is the
    /// same as `begin`'s; only where the shard files go differs. Fails with
    /// `InvalidLayout` for a wrong count or a repeated placement, `UnknownDisk` for a
    /// disk this node does not have, and `RemoteShard` for a node no peer client
    /// reaches.
    pub fn begin_at(
        &self,
        upload: UploadId,
        profile: EcProfile,
        placements: &[ShardPlacement],
    ) -> Result<StripeWriter, BlobStoreError> {
        if placements.len() != profile.width()
            || placements
                .iter()
                .enumerate()
                .any(|(i, p)| placements[..i].contains(p))
        {
            return Err(BlobStoreError::InvalidLayout);
        }
        let targets = placements
            .iter()
            .enumerate()
            .map(|(i, p)| self.target(upload, i, *p))
            .collect::<Result<Vec<_>, BlobStoreError>>()?;
        Ok(StripeWriter::new(
            self.inner.clone(),
            upload,
            profile,
            targets,
        ))
    }

    /// The shard client of `node`, which holds shard `shard`.
    fn peer(&self, shard: usize, node: NodeId) -> Result<ShardClient, BlobStoreError> {
        self.peers
            .as_ref()
            .and_then(|peers| peers.client(node))
            .ok_or(BlobStoreError::RemoteShard { shard, node })
    }

    /// Streams bytes `[range.start, range.end)` of a blob of `size` bytes. Memory is
    /// bounded by a few stripes; every chunk's checksum is verified; a missing or
    /// corrupt shard is rebuilt from parity (and counted) as long as `k` shards of the
    /// stripe are good.
    pub fn read(
        &self,
        layout: &StripedLayout,
        digest: &Digest,
        size: u64,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, BlobStoreError>> + Send + 'static {
        reader::read(
            self.inner.clone(),
            self.peers.clone(),
            layout.clone(),
            digest.clone(),
            size,
            range,
        )
    }

    /// Writes shard `index` of a committed blob anew at `to` (a disk of this node or of
    /// a peer), from its current file where that is good and rebuilt from the other
    /// shards where not: what repair, drain and rebalance do for one shard. The new
    /// file is staged, made durable and only then renamed into place, so `to` may be
    /// the shard's current placement (a corrupt file rewritten in place). Returns the
    /// shard bytes written. On failure only the staging file is removed; the caller
    /// changes the layout only after success.
    pub async fn rebuild_shard(
        &self,
        layout: &StripedLayout,
        digest: &Digest,
        size: u64,
        index: usize,
        to: ShardPlacement,
    ) -> Result<u64, BlobStoreError> {
        self.rebuild_shard_paced(layout, digest, size, index, to, &mut Pacer::new(u64::MAX))
            .await
    }

    /// [`rebuild_shard`](Self::rebuild_shard), writing each chunk only when `pacer`
    /// allows: what rebalancing uses to bound the bandwidth its moves take.
    pub async fn rebuild_shard_paced(
        &self,
        layout: &StripedLayout,
        digest: &Digest,
        size: u64,
        index: usize,
        to: ShardPlacement,
        pacer: &mut Pacer,
    ) -> Result<u64, BlobStoreError> {
        if !layout.is_valid() || index >= layout.profile.width() {
            return Err(BlobStoreError::InvalidLayout);
        }
        let mut target = self.target(layout.upload, index, to)?;
        let result = self
            .copy_shard(&mut target, layout, digest, size, index, pacer)
            .await;
        if result.is_ok() {
            // Reading the old file for the copy found its damage again: that is what
            // was just repaired.
            let mut damaged = self
                .inner
                .damaged
                .lock()
                .expect("damaged shards lock poisoned");
            damaged.retain(|d| {
                !(d.digest == *digest && d.upload == layout.upload && d.index == index)
            });
        }
        if result.is_err()
            && let Err(e) = target.abort().await
        {
            tracing::warn!(%digest, shard = index, error = %e,
                "could not remove the staging file of a failed shard rebuild; the sweeps will");
        }
        result
    }

    async fn copy_shard(
        &self,
        target: &mut ShardTarget,
        layout: &StripedLayout,
        digest: &Digest,
        size: u64,
        index: usize,
        pacer: &mut Pacer,
    ) -> Result<u64, BlobStoreError> {
        use futures::StreamExt;
        target
            .create(format::ShardHeader {
                codec: layout.codec,
                profile: layout.profile,
                shard_index: index as u8,
                shard_bytes: layout.shard_bytes,
            })
            .await?;
        let chunks = reader::shard_chunks(
            self.inner.clone(),
            self.peers.clone(),
            layout.clone(),
            digest.clone(),
            size,
            index,
        );
        futures::pin_mut!(chunks);
        let (mut stripe, mut written) = (0u64, 0u64);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            pacer.take(chunk.len() as u64).await;
            target.write_chunk(stripe, chunk).await?;
            stripe += 1;
        }
        target.sync().await?;
        target.publish(digest).await?;
        Ok(written)
    }

    /// The target that writes shard `index` of `upload` at `to`.
    fn target(
        &self,
        upload: UploadId,
        index: usize,
        to: ShardPlacement,
    ) -> Result<ShardTarget, BlobStoreError> {
        if to.node == self.inner.node {
            let slot = self
                .inner
                .slot(to.disk)
                .ok_or(BlobStoreError::UnknownDisk { disk: to.disk })?;
            return Ok(ShardTarget::local(
                self.inner.clone(),
                slot.disk.clone(),
                upload,
                index,
            ));
        }
        let client = self.peer(index, to.node)?;
        Ok(ShardTarget::remote(
            client,
            ShardRef {
                disk: to.disk,
                upload,
                index: index as u8,
            },
        ))
    }

    /// Removes the file of shard `index` of a blob at `at` (this node or a peer), after
    /// the layout moved that shard elsewhere. A missing file is fine.
    pub async fn delete_shard(
        &self,
        layout: &StripedLayout,
        digest: &Digest,
        index: usize,
        at: ShardPlacement,
    ) -> Result<(), BlobStoreError> {
        let upload = layout.upload;
        if at.node == self.inner.node {
            let slot = self
                .inner
                .slot(at.disk)
                .ok_or(BlobStoreError::UnknownDisk { disk: at.disk })?;
            let disk = slot.disk.clone();
            let path = format::final_path(digest, &upload, index);
            return blocking(move || remove(disk.as_ref(), &path).map(drop)).await?;
        }
        let client = self.peer(index, at.node)?;
        let shard = ShardRef {
            disk: at.disk,
            upload,
            index: index as u8,
        };
        client
            .delete(&shard, digest)
            .await
            .map(drop)
            .map_err(|source| BlobStoreError::Peer {
                node: at.node,
                shard: index,
                source,
            })
    }

    /// Removes the shard files of a blob. Files already gone are fine. The removals are
    /// not synced: a file that comes back after a crash is an orphan, and the orphan
    /// sweep removes it. Shards on other nodes are removed through their shard service
    /// (see `with_peers`); without a client for one of them, nothing is removed and
    /// the error is `RemoteShard`.
    pub async fn delete(
        &self,
        layout: &StripedLayout,
        digest: &Digest,
    ) -> Result<(), BlobStoreError> {
        if !layout.is_valid() {
            return Err(BlobStoreError::InvalidLayout);
        }
        let mut remote = Vec::new();
        let mut local = Vec::new();
        for (index, placement) in layout.shards.iter().copied().enumerate() {
            if placement.node == self.inner.node {
                local.push((index, placement));
            } else {
                // Every peer must be reachable before anything is removed.
                self.peer(index, placement.node)?;
                remote.push((index, placement));
            }
        }
        let inner = self.inner.clone();
        let (digest_owned, upload) = (digest.clone(), layout.upload);
        blocking(move || {
            for (index, placement) in local {
                let Some(slot) = inner.slot(placement.disk) else {
                    tracing::warn!(disk = %placement.disk, "deleting a shard on a disk this node no longer has");
                    continue;
                };
                let path = format::final_path(&digest_owned, &upload, index);
                remove(slot.disk.as_ref(), &path)?;
            }
            Ok::<(), BlobStoreError>(())
        })
        .await??;
        for (index, placement) in remote {
            self.delete_shard(layout, digest, index, placement).await?;
        }
        Ok(())
    }

    /// Removes staging files whose upload is not live (`is_live(upload, idle)` false,
    /// `idle` being how long ago the file was last written). Returns how many files
    /// were removed.
    pub async fn sweep_staging(
        &self,
        is_live: impl Fn(&UploadId, Duration) -> bool + Send + 'static,
    ) -> Result<usize, BlobStoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let now = SystemTime::now();
            let mut removed = 0;
            for slot in &inner.disks {
                let disk = slot.disk.as_ref();
                let dir = Path::new(STAGING_DIR);
                for entry in list(disk, dir)? {
                    let Some((upload, _)) = format::parse_shard_name(&entry.name) else {
                        continue;
                    };
                    let idle = now.duration_since(entry.modified).unwrap_or_default();
                    if entry.is_dir || is_live(&upload, idle) {
                        continue;
                    }
                    removed += usize::from(remove(disk, &dir.join(&entry.name))?);
                }
            }
            Ok(removed)
        })
        .await?
    }

    /// Removes final shard files that no committed layout places where they are
    /// (`is_committed(digest, upload, index, placement)` false: no such blob, another
    /// upload's files, or a shard that repair or drain moved elsewhere) and that were
    /// last modified at least `min_age` ago, so a commit or a move racing the sweep is
    /// never touched. Returns how many files were removed.
    pub async fn sweep_orphans(
        &self,
        is_committed: impl Fn(&Digest, &UploadId, usize, ShardPlacement) -> bool + Send + 'static,
        min_age: Duration,
    ) -> Result<usize, BlobStoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let now = SystemTime::now();
            let mut removed = 0;
            for slot in &inner.disks {
                let disk = slot.disk.as_ref();
                for (digest, dir) in blob_dirs(disk)? {
                    for entry in list(disk, &dir)? {
                        let Some((upload, index)) = format::parse_shard_name(&entry.name) else {
                            continue;
                        };
                        let age = now.duration_since(entry.modified).unwrap_or_default();
                        let here = ShardPlacement {
                            node: inner.node,
                            disk: disk.id(),
                        };
                        if entry.is_dir
                            || age < min_age
                            || is_committed(&digest, &upload, index, here)
                        {
                            continue;
                        }
                        removed += usize::from(remove(disk, &dir.join(&entry.name))?);
                    }
                }
            }
            Ok(removed)
        })
        .await?
    }

    /// Space and state of every disk. Asks each disk for its space (a statvfs).
    pub fn disk_stats(&self) -> Vec<DiskStats> {
        self.inner
            .disks
            .iter()
            .map(|slot| self.inner.stats(slot))
            .collect()
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.inner.counters
    }

    /// The damaged shards reads found since the last call.
    pub fn take_damaged(&self) -> Vec<DamagedShard> {
        std::mem::take(
            &mut *self
                .inner
                .damaged
                .lock()
                .expect("damaged shards lock poisoned"),
        )
    }
}

/// Creates the fixed directories of a disk and makes them durable, so later commits
/// only have to sync the directories they create.
fn prepare_tree(disk: &dyn Disk) -> Result<(), BlobStoreError> {
    let err = |path: &Path, e| BlobStoreError::io(disk.id(), path, e);
    let blobs = Path::new(BLOBS_DIR);
    for alg in DIGEST_ALGORITHMS {
        let dir = blobs.join(alg.as_str());
        disk.create_dir_all(&dir).map_err(|e| err(&dir, e))?;
    }
    let staging = Path::new(STAGING_DIR);
    disk.create_dir_all(staging).map_err(|e| err(staging, e))?;
    disk.sync_dir(blobs).map_err(|e| err(blobs, e))?;
    disk.sync_dir(Path::new(""))
        .map_err(|e| err(Path::new(""), e))
}

/// Lists a directory; a directory that does not exist is empty.
fn list(disk: &dyn Disk, dir: &Path) -> Result<Vec<crate::disk::DirEntry>, BlobStoreError> {
    match disk.list(dir) {
        Ok(entries) => Ok(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(BlobStoreError::io(disk.id(), dir, e)),
    }
}

/// Removes a file; returns whether this call removed it.
fn remove(disk: &dyn Disk, path: &Path) -> Result<bool, BlobStoreError> {
    match disk.remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BlobStoreError::io(disk.id(), path, e)),
    }
}

/// Every `blobs/<algorithm>/<ab>/<hex>` directory of a disk, with its digest.
/// Directories whose names are not a digest are skipped: they are not berth's.
fn blob_dirs(disk: &dyn Disk) -> Result<Vec<(Digest, PathBuf)>, BlobStoreError> {
    let mut out = Vec::new();
    for alg in DIGEST_ALGORITHMS {
        let alg_dir = Path::new(BLOBS_DIR).join(alg.as_str());
        for prefix in list(disk, &alg_dir)?.into_iter().filter(|e| e.is_dir) {
            let prefix_dir = alg_dir.join(&prefix.name);
            for blob in list(disk, &prefix_dir)?.into_iter().filter(|e| e.is_dir) {
                let Ok(digest) = format!("{}:{}", alg.as_str(), blob.name).parse::<Digest>() else {
                    continue;
                };
                if format::blob_dir(&digest) == prefix_dir.join(&blob.name) {
                    out.push((digest, prefix_dir.join(&blob.name)));
                }
            }
        }
    }
    Ok(out)
}
