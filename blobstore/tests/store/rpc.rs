//! The shard service between "nodes" of one test process: each node is a `BlobStore`
//! over its own tempdir disks, serving its `ShardService` from a tonic server on a
//! loopback ephemeral port. Proves that a blob written onto another node's disks, or
//! spread over two nodes, reads back byte-identical through the peer resolver; that a
//! ranged GetChunks reads only its stripes; that corruption on the serving node is
//! caught and rebuilt from parity; that abort and the staging sweep leave nothing of
//! an unfinished remote shard; and that a node refuses requests meant for another.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_blobstore::{
    BlobStore, ShardClient, ShardRef, ShardRpcError, ShardService, StoreConfig, format,
    rpc::ShardStat,
};
use berth_types::{DiskId, EcProfile, NodeId, ShardPlacement, StripedLayout, UploadId};
use bytes::Bytes;
use futures::TryStreamExt;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::common::{data, digest_of, fs_disks, get};

const SHARD: u32 = 4096;
const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
/// Every wait in these tests gives up after this long.
const WAIT: Duration = Duration::from_secs(10);

/// One node: its disks, its store and its running shard server.
struct Node {
    dir: TempDir,
    store: BlobStore,
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Node {
    async fn start(id: NodeId, disks: u32, k: u8, m: u8) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            profile: EcProfile::new(k, m).unwrap(),
            shard_bytes: SHARD,
        };
        let store = BlobStore::open(id, fs_disks(dir.path(), disks), cfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .add_service(ShardService::new(&store).into_server())
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    stopped.await.ok();
                }),
        );
        Node {
            dir,
            store,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn client(&self, as_node: NodeId) -> ShardClient {
        ShardClient::connect_lazy(as_node, &self.addr).unwrap()
    }

    fn id(&self) -> NodeId {
        self.store.node()
    }

    fn disk_root(&self, disk: DiskId) -> PathBuf {
        self.dir.path().join(format!("disk{disk}"))
    }

    fn staging_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let staging = entry.unwrap().path().join(format::STAGING_DIR);
            for file in std::fs::read_dir(staging).unwrap() {
                out.push(file.unwrap().path());
            }
        }
        out
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        tokio::time::timeout(WAIT, self.task.take().unwrap())
            .await
            .expect("the shard server stops within the wait")
            .unwrap()
            .unwrap();
    }
}

/// `store` of `this`, reaching the other nodes' shard services.
fn with_peers(this: &Node, peers: &[&Node]) -> BlobStore {
    let peers: Vec<ShardClient> = peers.iter().map(|p| p.client(p.id())).collect();
    this.store
        .with_peers(move |node| peers.iter().find(|c| c.node() == node).cloned())
}

fn at(node: NodeId, disk: u32) -> ShardPlacement {
    ShardPlacement {
        node,
        disk: DiskId(disk),
    }
}

/// Writes `bytes` onto `placements` through `store` and commits.
async fn put_at(
    store: &BlobStore,
    upload: UploadId,
    placements: &[ShardPlacement],
    bytes: &[u8],
) -> StripedLayout {
    let mut writer = store.begin_at(upload, placements).unwrap();
    for piece in bytes.chunks(3000) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let layout = writer.commit(&digest_of(bytes)).await.unwrap();
    assert_eq!(layout.shards, placements);
    layout
}

fn shard_ref(layout: &StripedLayout, i: usize) -> ShardRef {
    ShardRef {
        disk: layout.shards[i].disk,
        upload: layout.upload,
        index: i as u8,
    }
}

fn header(layout: &StripedLayout, i: usize) -> format::ShardHeader {
    format::ShardHeader {
        codec: layout.codec,
        profile: layout.profile,
        shard_index: i as u8,
        shard_bytes: layout.shard_bytes,
    }
}

/// Polls `done` until it holds, for at most `WAIT`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test]
async fn a_blob_written_onto_another_node_reads_back_on_both() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    let a_store = with_peers(&a, &[&b]);
    let bytes = data(11, 5 * 2 * SHARD as usize + 77);
    let size = bytes.len() as u64;
    let digest = digest_of(&bytes);
    let upload = UploadId::new(A, 1);
    let layout = put_at(&a_store, upload, &[at(B, 0), at(B, 1), at(B, 2)], &bytes).await;

    // Node A has none of the shards: every byte came from B over the shard service.
    assert!(
        get(&a_store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    let range = 3 * u64::from(SHARD) + 5..7 * u64::from(SHARD) + 9;
    let got = get(&a_store, &layout, &digest, size, range.clone())
        .await
        .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
    assert_eq!(a.store.counters().bytes_read(), 0);
    assert_eq!(a_store.counters().reconstructions(), 0);
    // Node B reads its own shard files from disk, byte-identical.
    assert!(
        get(&b.store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );

    let stripes = layout.stripe_count(size);
    let client = b.client(B);
    for i in 0..3 {
        let stat = client.stat(&shard_ref(&layout, i), &digest).await.unwrap();
        assert_eq!(
            stat,
            ShardStat::Present {
                size_bytes: format::chunk_offset(SHARD, stripes),
                header: Some(header(&layout, i)),
            }
        );
    }

    // Deleting through the peer removes B's files.
    a_store.delete(&layout, &digest).await.unwrap();
    let stat = client.stat(&shard_ref(&layout, 0), &digest).await.unwrap();
    assert_eq!(stat, ShardStat::Missing);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_blob_spread_over_two_nodes_reads_back_through_the_resolver() {
    let a = Node::start(A, 4, 2, 2).await;
    let b = Node::start(B, 4, 2, 2).await;
    let a_store = with_peers(&a, &[&b]);
    let b_store = with_peers(&b, &[&a]);
    let bytes = data(12, 4 * 2 * SHARD as usize + 1234);
    let size = bytes.len() as u64;
    let digest = digest_of(&bytes);
    let placements = [at(A, 0), at(B, 0), at(A, 1), at(B, 1)];
    let layout = put_at(&a_store, UploadId::new(A, 2), &placements, &bytes).await;

    for store in [&a_store, &b_store] {
        assert!(get(store, &layout, &digest, size, 0..size).await.unwrap() == bytes);
        let range = u64::from(SHARD) - 3..5 * u64::from(SHARD) + 1;
        let got = get(store, &layout, &digest, size, range.clone())
            .await
            .unwrap();
        assert!(got == bytes[range.start as usize..range.end as usize]);
    }
    // Both nodes read half the data shards from the other one: nothing was rebuilt.
    assert_eq!(a_store.counters().reconstructions(), 0);
    assert_eq!(b_store.counters().reconstructions(), 0);
    assert_eq!(a_store.counters().shards_unavailable(), 0);

    // Without a resolver the peer's shards are unavailable and parity covers them.
    assert!(
        get(&a.store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    assert!(a.store.counters().reconstructions() > 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_ranged_get_reads_only_the_requested_stripes() {
    let a = Node::start(A, 1, 1, 0).await;
    let b = Node::start(B, 1, 1, 0).await;
    let a_store = with_peers(&a, &[&b]);
    let bytes = data(13, 6 * SHARD as usize);
    let digest = digest_of(&bytes);
    let layout = put_at(&a_store, UploadId::new(A, 3), &[at(B, 0)], &bytes).await;

    let before = b.store.counters().bytes_read();
    let chunks: Vec<Bytes> = b
        .client(B)
        .get_chunks(&shard_ref(&layout, 0), &digest, &header(&layout, 0), 2..4)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.len(), 2);
    assert!(chunks.concat() == bytes[2 * SHARD as usize..4 * SHARD as usize]);
    assert_eq!(
        b.store.counters().bytes_read() - before,
        format::HEADER_BYTES + 2 * format::chunk_bytes(SHARD)
    );

    // The reader asks the peer for the stripes of its range only.
    let before = b.store.counters().bytes_read();
    let size = bytes.len() as u64;
    let range = 3 * u64::from(SHARD) + 1..4 * u64::from(SHARD) - 1;
    let got = get(&a_store, &layout, &digest, size, range.clone())
        .await
        .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
    assert_eq!(
        b.store.counters().bytes_read() - before,
        format::HEADER_BYTES + format::chunk_bytes(SHARD)
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_chunk_corrupted_on_the_serving_node_is_detected_and_rebuilt() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    let a_store = with_peers(&a, &[&b]);
    let bytes = data(14, 4 * 2 * SHARD as usize);
    let size = bytes.len() as u64;
    let digest = digest_of(&bytes);
    let layout = put_at(
        &a_store,
        UploadId::new(A, 4),
        &[at(B, 0), at(B, 1), at(B, 2)],
        &bytes,
    )
    .await;

    let path =
        b.disk_root(layout.shards[0].disk)
            .join(format::final_path(&digest, &layout.upload, 0));
    let mut file = std::fs::read(&path).unwrap();
    let at_byte = format::chunk_offset(SHARD, 1) + format::CHECKSUM_BYTES + 100;
    file[at_byte as usize] ^= 0x5a;
    std::fs::write(&path, file).unwrap();

    // The serving node refuses to send the bad chunk; the client sees which stripe.
    let got: Vec<Result<Bytes, ShardRpcError>> = futures::StreamExt::collect(
        b.client(B)
            .get_chunks(&shard_ref(&layout, 0), &digest, &header(&layout, 0), 0..3),
    )
    .await;
    assert_eq!(got.len(), 2);
    assert!(got[0].as_ref().unwrap()[..] == bytes[..SHARD as usize]);
    assert!(matches!(got[1], Err(ShardRpcError::Corrupt { stripe: 1 })));
    assert_eq!(b.store.counters().checksum_failures(), 1);

    // The reader on the other node rebuilds that stripe from parity.
    assert!(
        get(&a_store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    assert_eq!(a_store.counters().checksum_failures(), 1);
    assert_eq!(a_store.counters().reconstructions(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn abort_removes_the_staging_files_on_the_peer() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    let a_store = with_peers(&a, &[&b]);
    let mut writer = a_store
        .begin_at(UploadId::new(A, 5), &[at(B, 0), at(B, 1), at(B, 2)])
        .unwrap();
    writer
        .write(Bytes::from(data(15, 3 * 2 * SHARD as usize)))
        .await
        .unwrap();
    eventually("three staging files on B", || b.staging_files().len() == 3).await;
    writer.abort().await.unwrap();
    assert_eq!(b.staging_files(), Vec::<PathBuf>::new());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_writer_dropped_mid_stream_leaves_only_staging_that_the_sweep_removes() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    let a_store = with_peers(&a, &[&b]);
    let upload = UploadId::new(A, 6);
    let bytes = data(16, 3 * 2 * SHARD as usize);
    let mut writer = a_store
        .begin_at(upload, &[at(B, 0), at(B, 1), at(B, 2)])
        .unwrap();
    writer.write(Bytes::from(bytes.clone())).await.unwrap();
    let full = format::chunk_offset(SHARD, 3);
    eventually("three stripes in B's staging files", || {
        let files = b.staging_files();
        files.len() == 3 && files.iter().all(|f| file_len(f) == full)
    })
    .await;
    drop(writer);

    let client = b.client(B);
    let layout_digest = digest_of(&bytes);
    for (i, disk) in [0, 1, 2].into_iter().enumerate() {
        let shard = ShardRef {
            disk: DiskId(disk),
            upload,
            index: i as u8,
        };
        assert_eq!(
            client.stat(&shard, &layout_digest).await.unwrap(),
            ShardStat::Missing
        );
    }
    assert_eq!(b.store.sweep_staging(|_| false).await.unwrap(), 3);
    assert_eq!(b.staging_files(), Vec::<PathBuf>::new());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_put_stream_cut_off_leaves_nothing_after_the_sweep() {
    let b = Node::start(B, 1, 1, 0).await;
    let upload = UploadId::new(A, 7);
    let shard = ShardRef {
        disk: DiskId(0),
        upload,
        index: 0,
    };
    let header = format::ShardHeader {
        codec: berth_types::CodecId::ReedSolomonV1,
        profile: EcProfile::new(1, 0).unwrap(),
        shard_index: 0,
        shard_bytes: SHARD,
    };
    let mut put = b.client(B).put_chunks(&shard, &header);
    let chunk = Bytes::from(data(17, SHARD as usize));
    for stripe in 0..2 {
        put.send(
            stripe,
            &format::chunk_checksum(stripe, &chunk),
            chunk.clone(),
        )
        .await
        .unwrap();
    }
    let staging = b
        .disk_root(DiskId(0))
        .join(format::staging_path(&upload, 0));
    eventually("two chunks in staging", || {
        file_len(&staging) == format::chunk_offset(SHARD, 2)
    })
    .await;
    drop(put);
    // A sweep while the upload is live keeps the file; once it is not, removes it.
    assert_eq!(
        b.store.sweep_staging(move |u| *u == upload).await.unwrap(),
        0
    );
    assert_eq!(b.store.sweep_staging(|_| false).await.unwrap(), 1);
    assert!(!staging.exists());
    b.stop().await;
}

#[tokio::test]
async fn a_chunk_whose_checksum_fails_on_the_way_is_never_written() {
    let b = Node::start(B, 1, 1, 0).await;
    let upload = UploadId::new(A, 8);
    let shard = ShardRef {
        disk: DiskId(0),
        upload,
        index: 0,
    };
    let header = format::ShardHeader {
        codec: berth_types::CodecId::ReedSolomonV1,
        profile: EcProfile::new(1, 0).unwrap(),
        shard_index: 0,
        shard_bytes: SHARD,
    };
    let mut put = b.client(B).put_chunks(&shard, &header);
    let chunk = Bytes::from(data(18, SHARD as usize));
    let wrong = format::chunk_checksum(1, &chunk);
    // The peer refuses the stream; the writer learns it on a later send or at finish.
    let sent = put.send(0, &wrong, chunk).await;
    let err = match sent {
        Err(e) => e,
        Ok(()) => put.finish().await.unwrap_err(),
    };
    assert!(
        matches!(
            &err,
            ShardRpcError::Refused {
                code: tonic::Code::DataLoss,
                ..
            }
        ),
        "{err:?}"
    );
    let staging = b
        .disk_root(DiskId(0))
        .join(format::staging_path(&upload, 0));
    assert_eq!(file_len(&staging), format::HEADER_BYTES);
    assert_eq!(b.store.counters().checksum_failures(), 1);
    b.stop().await;
}

#[tokio::test]
async fn a_node_refuses_requests_addressed_to_another_node() {
    let b = Node::start(B, 1, 1, 0).await;
    let shard = ShardRef {
        disk: DiskId(0),
        upload: UploadId::new(A, 9),
        index: 0,
    };
    let digest = digest_of(b"x");
    let err = b.client(A).stat(&shard, &digest).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ShardRpcError::Refused {
                code: tonic::Code::FailedPrecondition,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        b.client(B).stat(&shard, &digest).await.unwrap(),
        ShardStat::Missing
    );
    b.stop().await;
}
