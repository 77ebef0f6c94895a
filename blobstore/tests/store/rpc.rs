//! The shard service between "nodes" of one test process: each node is a `BlobStore`
//! over its own tempdir disks, serving its `ShardService` from a tonic server on a
//! loopback ephemeral port. Proves that a blob written onto another node's disks, or
//! spread over two nodes, reads back byte-identical through the peer resolver; that a
//! ranged GetChunks reads only its stripes; that corruption on the serving node is
//! caught by the reader and rebuilt from parity; that a node holding a one-parity
//! blob's parity reads one data shard fewer from its peers; that abort and the staging sweep leave nothing of
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

use crate::common::{data, digest_of, flip_byte, fs_disks, get};

pub(crate) const SHARD: u32 = 4096;
pub(crate) const A: NodeId = NodeId(1);
pub(crate) const B: NodeId = NodeId(2);
/// Every wait in these tests gives up after this long.
const WAIT: Duration = Duration::from_secs(10);

/// One node: its disks, its store and its running shard server.
pub(crate) struct Node {
    dir: TempDir,
    pub(crate) store: BlobStore,
    pub(crate) addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// What a test node's listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mount {
    /// The gRPC shard service and raw GetChunks, as a node of this build does.
    Both,
    /// Only the gRPC service, as a node of an older build does.
    GrpcOnly,
    /// Only raw GetChunks: a read that succeeds went over it.
    RawOnly,
}

impl Node {
    pub(crate) async fn start(id: NodeId, disks: u32, k: u8, m: u8) -> Node {
        Node::start_with(id, disks, k, m, Mount::Both).await
    }

    async fn start_with(id: NodeId, disks: u32, k: u8, m: u8, mount: Mount) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            profile: EcProfile::new(k, m).unwrap(),
            shard_bytes: SHARD,
            ..StoreConfig::default()
        };
        let store = BlobStore::open(id, fs_disks(dir.path(), disks), cfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .add_optional_service(
                    (mount != Mount::RawOnly).then(|| ShardService::new(&store).into_server()),
                )
                .add_optional_service(
                    (mount != Mount::GrpcOnly).then(|| ShardService::new(&store).raw_chunks()),
                )
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

    pub(crate) fn client(&self, as_node: NodeId) -> ShardClient {
        ShardClient::connect_lazy(as_node, &self.addr).unwrap()
    }

    fn id(&self) -> NodeId {
        self.store.node()
    }

    pub(crate) fn disk_root(&self, disk: DiskId) -> PathBuf {
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

    pub(crate) async fn stop(mut self) {
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

pub(crate) fn at(node: NodeId, disk: u32) -> ShardPlacement {
    ShardPlacement {
        node,
        disk: DiskId(disk),
    }
}

/// Writes `bytes` onto `placements` through `store` and commits.
pub(crate) async fn put_at(
    store: &BlobStore,
    upload: UploadId,
    placements: &[ShardPlacement],
    bytes: &[u8],
) -> StripedLayout {
    let mut writer = store.begin_at(upload, store.profile(), placements).unwrap();
    for piece in bytes.chunks(3000) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let written = writer.commit(&digest_of(bytes)).await.unwrap();
    assert_eq!(written.missing, Vec::<usize>::new());
    assert_eq!(written.layout.shards, placements);
    written.layout
}

fn shard_ref(layout: &StripedLayout, i: usize) -> ShardRef {
    ShardRef {
        disk: layout.shards[i].disk,
        upload: layout.upload,
        index: i as u8,
    }
}

/// The header of the one shard of a 1+0 blob of `SHARD`-byte shards.
fn one_shard_header() -> format::ShardHeader {
    format::ShardHeader {
        codec: berth_types::CodecId::ReedSolomonV1,
        profile: EcProfile::new(1, 0).unwrap(),
        shard_index: 0,
        shard_bytes: SHARD,
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

/// Reads `range` of the blob `bytes` through `store`, checks the bytes, and returns
/// how many bytes `holder` read from its disks to serve it.
async fn holder_bytes_for(
    store: &BlobStore,
    holder: &Node,
    layout: &StripedLayout,
    bytes: &[u8],
    range: std::ops::Range<u64>,
) -> u64 {
    let before = holder.store.counters().bytes_read();
    let got = get(
        store,
        layout,
        &digest_of(bytes),
        bytes.len() as u64,
        range.clone(),
    )
    .await
    .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
    holder.store.counters().bytes_read() - before
}

/// Bytes a holder reads for one chunk of a shard: the file's header and the chunk.
fn one_chunk() -> u64 {
    format::HEADER_BYTES + format::chunk_bytes(SHARD)
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

    let client = b.client(B);
    for i in 0..3 {
        let stat = client.stat(&shard_ref(&layout, i), &digest).await.unwrap();
        assert_eq!(
            stat,
            ShardStat::Present {
                size_bytes: format::file_bytes(SHARD, layout.profile.k(), size),
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
    let range = 3 * u64::from(SHARD) + 1..4 * u64::from(SHARD) - 1;
    assert_eq!(
        holder_bytes_for(&a_store, &b, &layout, &bytes, range).await,
        one_chunk()
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
    flip_byte(
        &path,
        format::chunk_offset(SHARD, 1) + format::CHECKSUM_BYTES + 100,
    );

    // The serving node sends chunks as stored; the client checks each one and says
    // which stripe was bad.
    let got: Vec<Result<Bytes, ShardRpcError>> = futures::StreamExt::collect(
        b.client(B)
            .get_chunks(&shard_ref(&layout, 0), &digest, &header(&layout, 0), 0..3),
    )
    .await;
    assert_eq!(got.len(), 2);
    assert!(got[0].as_ref().unwrap()[..] == bytes[..SHARD as usize]);
    assert!(matches!(got[1], Err(ShardRpcError::Corrupt { stripe: 1 })));

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

/// Chunks cross between nodes as a raw HTTP/2 body: a node serving only that path is
/// read in full. A node of an older build, serving only the gRPC method, is read
/// through it. Either way a chunk corrupted on the serving node is named by its
/// stripe, a missing shard file is `NotFound` and a range past the file's end is
/// refused with `OUT_OF_RANGE`.
#[tokio::test]
async fn chunks_cross_as_a_raw_body_and_an_older_peer_is_read_through_grpc() {
    for mount in [Mount::RawOnly, Mount::GrpcOnly] {
        let b = Node::start_with(B, 1, 1, 0, mount).await;
        let bytes = data(21, 3 * SHARD as usize);
        let digest = digest_of(&bytes);
        let layout = put_at(&b.store, UploadId::new(B, 21), &[at(B, 0)], &bytes).await;
        let client = b.client(B);
        let shard = shard_ref(&layout, 0);
        let got: Vec<Bytes> = client
            .get_chunks(&shard, &digest, &one_shard_header(), 0..3)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{mount:?}: {e}"));
        assert!(got.concat() == bytes, "{mount:?}");

        let past = client
            .get_chunks(&shard, &digest, &one_shard_header(), 2..4)
            .try_collect::<Vec<Bytes>>()
            .await
            .unwrap_err();
        assert!(
            matches!(
                past,
                ShardRpcError::Refused {
                    code: tonic::Code::OutOfRange,
                    ..
                }
            ),
            "{mount:?}: {past:?}"
        );
        let missing = ShardRef {
            upload: UploadId::new(B, 22),
            ..shard
        };
        let gone = client
            .get_chunks(&missing, &digest, &one_shard_header(), 0..1)
            .try_collect::<Vec<Bytes>>()
            .await
            .unwrap_err();
        assert!(
            matches!(gone, ShardRpcError::NotFound { .. }),
            "{mount:?}: {gone:?}"
        );

        let path = b
            .disk_root(DiskId(0))
            .join(format::final_path(&digest, &layout.upload, 0));
        flip_byte(
            &path,
            format::chunk_offset(SHARD, 1) + format::CHECKSUM_BYTES + 7,
        );
        let got: Vec<Result<Bytes, ShardRpcError>> = futures::StreamExt::collect(
            client.get_chunks(&shard, &digest, &one_shard_header(), 0..3),
        )
        .await;
        assert_eq!(got.len(), 2, "{mount:?}");
        assert!(got[0].as_ref().unwrap()[..] == bytes[..SHARD as usize]);
        assert!(
            matches!(got[1], Err(ShardRpcError::Corrupt { stripe: 1 })),
            "{mount:?}: {:?}",
            got[1]
        );
        b.stop().await;
    }
}

/// The error record a node answers a raw GetChunks request body with: its tag, gRPC
/// code and message.
async fn raw_get(addr: &str, body: Vec<u8>) -> (u8, u32, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri("/berth.shard.v1.RawChunks/Get")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .unwrap();
    let response = channel.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let code = u32::from_le_bytes(bytes[1..5].try_into().unwrap());
    let len = u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 9 + len, "one error record, then the body ends");
    (
        bytes[0],
        code,
        String::from_utf8_lossy(&bytes[9..]).into_owned(),
    )
}

/// A request body a node cannot take is refused with one error record
/// (`INVALID_ARGUMENT`) before anything is opened: bytes that are not a request, and a
/// body far beyond any request (the node reads at most 16 KiB of it).
#[tokio::test]
async fn a_malformed_or_oversized_raw_request_is_refused() {
    let b = Node::start(B, 1, 1, 0).await;
    let invalid = tonic::Code::InvalidArgument as u32;
    let (tag, code, message) = raw_get(&b.addr, vec![0xff; 40]).await;
    assert_eq!((tag, code), (2, invalid), "{message}");
    // A length-delimited unknown field of 1 MiB: protobuf would skip it, the limit
    // refuses it.
    let mut huge = vec![0x7a, 0x80, 0x80, 0x40];
    huge.resize(4 + (1 << 20), 0);
    let (tag, code, message) = raw_get(&b.addr, huge).await;
    assert_eq!((tag, code), (2, invalid), "{message}");
    assert!(message.contains("length limit"), "{message}");
    b.stop().await;
}

/// A 2+1 blob whose data shards are on node B and whose parity is on node A.
async fn parity_here_data_there(
    a: &Node,
    b: &Node,
    seed: u64,
    len: usize,
) -> (BlobStore, StripedLayout, Vec<u8>) {
    let a_store = with_peers(a, &[b]);
    let bytes = data(seed, len);
    let layout = put_at(
        &a_store,
        UploadId::new(A, u128::from(seed)),
        &[at(B, 0), at(B, 1), at(A, 0)],
        &bytes,
    )
    .await;
    (a_store, layout, bytes)
}

#[tokio::test]
async fn a_node_holding_the_parity_reads_one_data_shard_from_the_peer_and_xors_the_other() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    // Whole stripes, then a short last stripe that reaches a little into the second
    // data shard.
    for (seed, len) in [(15, 12 * SHARD as usize), (17, 13 * SHARD as usize + 100)] {
        let (a_store, layout, bytes) = parity_here_data_there(&a, &b, seed, len).await;
        let size = bytes.len() as u64;
        let one_shard = format::file_bytes(SHARD, 2, size);
        let a_before = a.store.counters().bytes_read();
        // One data shard came over the network, the parity from A's disk; the other
        // data shard was never read. Decoding it by plan is not a repair.
        assert_eq!(
            holder_bytes_for(&a_store, &b, &layout, &bytes, 0..size).await,
            one_shard
        );
        assert_eq!(a.store.counters().bytes_read() - a_before, one_shard);
        assert_eq!(a_store.counters().reconstructions(), 0);

        // A range within one data shard of a stripe reads just that shard's chunk.
        let range = 2 * u64::from(SHARD) + 10..2 * u64::from(SHARD) + 20;
        assert_eq!(
            holder_bytes_for(&a_store, &b, &layout, &bytes, range).await,
            one_chunk()
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_bad_local_parity_chunk_sends_the_stripe_to_the_peer_for_the_other_data_shard() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    let (a_store, layout, bytes) = parity_here_data_there(&a, &b, 16, 12 * SHARD as usize).await;
    let size = bytes.len() as u64;
    let digest = digest_of(&bytes);
    let path =
        a.disk_root(layout.shards[2].disk)
            .join(format::final_path(&digest, &layout.upload, 2));
    flip_byte(
        &path,
        format::chunk_offset(SHARD, 3) + format::CHECKSUM_BYTES + 7,
    );

    assert!(
        get(&a_store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    assert_eq!(a_store.counters().checksum_failures(), 1);
    // Stripe 3 read both data shards from B instead: nothing had to be rebuilt.
    assert_eq!(a_store.counters().reconstructions(), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn abort_removes_the_staging_files_on_the_peer() {
    let a = Node::start(A, 3, 2, 1).await;
    let b = Node::start(B, 3, 2, 1).await;
    let a_store = with_peers(&a, &[&b]);
    let mut writer = a_store
        .begin_at(
            UploadId::new(A, 5),
            a_store.profile(),
            &[at(B, 0), at(B, 1), at(B, 2)],
        )
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
        .begin_at(upload, a_store.profile(), &[at(B, 0), at(B, 1), at(B, 2)])
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
    assert_eq!(b.store.sweep_staging(|_, _| false).await.unwrap(), 3);
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
    let header = one_shard_header();
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
        b.store
            .sweep_staging(move |u, _| *u == upload)
            .await
            .unwrap(),
        0
    );
    assert_eq!(b.store.sweep_staging(|_, _| false).await.unwrap(), 1);
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
    let header = one_shard_header();
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

/// Only the last chunk of a PutChunks stream may be shorter than the header's shard
/// size, and only by whole 64-byte blocks: a short chunk followed by another, or a
/// chunk of another length, is refused with INVALID_ARGUMENT; a short last chunk is
/// written and answered with the file's real length.
#[tokio::test]
async fn only_the_last_chunk_of_a_put_may_be_short() {
    let b = Node::start(B, 1, 1, 0).await;
    let header = one_shard_header();
    let put = |n: u128, chunks: Vec<Vec<u8>>| {
        let client = b.client(B);
        async move {
            let shard = ShardRef {
                disk: DiskId(0),
                upload: UploadId::new(A, 100 + n),
                index: 0,
            };
            let mut put = client.put_chunks(&shard, &header);
            for (stripe, chunk) in chunks.into_iter().enumerate() {
                let sum = format::chunk_checksum(stripe as u64, &chunk);
                put.send(stripe as u64, &sum, Bytes::from(chunk)).await?;
            }
            put.finish().await
        }
    };
    let full = data(19, SHARD as usize);
    let refused = |r: Result<_, ShardRpcError>| {
        matches!(
            r,
            Err(ShardRpcError::Refused {
                code: tonic::Code::InvalidArgument,
                ..
            })
        )
    };
    assert!(refused(
        put(1, vec![full[..64].to_vec(), full.clone()]).await
    ));
    assert!(refused(
        put(2, vec![full.clone(), full[..100].to_vec()]).await
    ));
    assert!(refused(
        put(3, vec![[full.clone(), full.clone()].concat()]).await
    ));
    let staging = b
        .disk_root(DiskId(0))
        .join(format::staging_path(&UploadId::new(A, 104), 0));
    put(4, vec![full.clone(), full[..128].to_vec()])
        .await
        .unwrap();
    assert_eq!(
        file_len(&staging),
        format::HEADER_BYTES + format::chunk_bytes(SHARD) + 32 + 128
    );
    b.stop().await;
}

// A stream the peer refuses part-way: once a `send` has met the peer's answer, the
// `finish` that follows gets an error too (it used to poll the finished call again and
// panic, which killed the repair task that was rebuilding onto that peer).
#[tokio::test]
async fn finish_after_a_refused_send_is_an_error() {
    let b = Node::start(B, 1, 1, 0).await;
    let header = one_shard_header();
    let shard = ShardRef {
        disk: DiskId(0),
        upload: UploadId::new(A, 200),
        index: 0,
    };
    let full = data(23, SHARD as usize);
    let mut put = b.client(B).put_chunks(&shard, &header);
    // A short chunk may only be the last: the peer refuses the stream at the next one.
    let mut failed = None;
    // The refusal ends the call; a send after that meets its answer (bounded wait).
    for stripe in 0..100u64 {
        if stripe > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let chunk = if stripe == 0 {
            full[..64].to_vec()
        } else {
            full.clone()
        };
        let sum = format::chunk_checksum(stripe, &chunk);
        if let Err(e) = put.send(stripe, &sum, Bytes::from(chunk)).await {
            failed = Some(e);
            break;
        }
    }
    assert!(failed.is_some(), "the peer never refused the stream");
    assert!(put.finish().await.is_err());
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

const C: NodeId = NodeId(3);

/// A node whose shard server runs on a runtime of its own, so `kill` can drop every
/// task and connection of it at once, as a crash would.
struct Killable {
    _dir: TempDir,
    id: NodeId,
    addr: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl Killable {
    fn start(id: NodeId, disks: u32) -> Killable {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            profile: EcProfile::SINGLE,
            shard_bytes: SHARD,
            ..StoreConfig::default()
        };
        let store = BlobStore::open(id, fs_disks(dir.path(), disks), cfg).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let service = ShardService::new(&store);
        let raw = service.raw_chunks();
        let grpc = service.into_server();
        rt.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            Server::builder()
                .add_service(grpc)
                .add_service(raw)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
        });
        Killable {
            _dir: dir,
            id,
            addr,
            rt: Some(rt),
        }
    }

    fn client(&self) -> ShardClient {
        ShardClient::connect_lazy(self.id, &self.addr).unwrap()
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the first half of `bytes`, runs `midway`, writes the rest and commits.
async fn put_with_fault(
    store: &BlobStore,
    upload: UploadId,
    profile: EcProfile,
    placements: &[ShardPlacement],
    bytes: &[u8],
    midway: impl std::future::Future<Output = ()>,
) -> Result<berth_blobstore::Written, berth_blobstore::BlobStoreError> {
    let mut writer = store.begin_at(upload, profile, placements).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    writer.write(Bytes::copy_from_slice(first)).await?;
    midway.await;
    writer.write(Bytes::copy_from_slice(rest)).await?;
    writer.commit(&digest_of(bytes)).await
}

#[tokio::test]
async fn a_peer_lost_mid_upload_leaves_a_blob_with_a_shard_to_repair_and_repair_restores_it() {
    let a = Node::start(A, 2, 1, 0).await;
    let b = Node::start(B, 2, 1, 0).await;
    let mut c = Killable::start(C, 2);
    let clients = [b.client(B), c.client()];
    let a_store = a
        .store
        .with_peers(move |node| clients.iter().find(|c| c.node() == node).cloned());
    let profile = EcProfile::new(2, 2).unwrap();
    let placements = [at(A, 0), at(B, 0), at(C, 0), at(B, 1)];
    let bytes = data(21, 6 * 2 * SHARD as usize + 333);
    let (size, digest) = (bytes.len() as u64, digest_of(&bytes));

    // C dies halfway: 3 of 4 targets remain, which is k + 1, so the upload commits
    // and names shard 2 as missing.
    let written = put_with_fault(
        &a_store,
        UploadId::new(A, 21),
        profile,
        &placements,
        &bytes,
        async { c.kill() },
    )
    .await
    .unwrap();
    assert_eq!(written.missing, vec![2]);
    let mut layout = written.layout;
    assert_eq!(layout.shards, placements);
    assert!(
        get(&a_store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );

    // Repair writes shard 2 anew on A's second disk from the surviving shards.
    let written = a_store
        .rebuild_shard(&layout, &digest, size, 2, at(A, 1))
        .await
        .unwrap();
    // Every chunk but the short last one is a whole shard.
    assert_eq!(
        written,
        (layout.stripe_count(size) - 1) * u64::from(SHARD)
            + u64::from(format::last_shard_bytes(SHARD, layout.profile.k(), size))
    );
    layout.shards[2] = at(A, 1);
    // With B unreachable too, A's own two shards (data shard 0 and the rebuilt
    // parity shard 2) are k shards: enough to decode the whole blob.
    let a_alone = a.store.with_peers(|_| None);
    assert!(
        get(&a_alone, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_upload_that_loses_more_than_its_parity_allows_fails() {
    let a = Node::start(A, 1, 1, 0).await;
    let b = Node::start(B, 1, 1, 0).await;
    let mut c = Killable::start(C, 1);
    let clients = [b.client(B), c.client()];
    let a_store = a
        .store
        .with_peers(move |node| clients.iter().find(|c| c.node() == node).cloned());
    let bytes = data(22, 6 * 2 * SHARD as usize);
    // 2+1 needs all three targets (k + 1 = 3): losing C fails the upload.
    let failed = put_with_fault(
        &a_store,
        UploadId::new(A, 22),
        EcProfile::new(2, 1).unwrap(),
        &[at(A, 0), at(B, 0), at(C, 0)],
        &bytes,
        async { c.kill() },
    )
    .await;
    assert!(failed.is_err(), "{failed:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_corrupt_shard_is_rewritten_in_place_and_a_moved_one_leaves_its_old_home() {
    let a = Node::start(A, 2, 1, 0).await;
    let b = Node::start(B, 2, 1, 0).await;
    let a_store = with_peers(&a, &[&b]);
    let bytes = data(23, 5 * 2 * SHARD as usize + 9);
    let (size, digest) = (bytes.len() as u64, digest_of(&bytes));
    let mut layout = put_with_fault(
        &a_store,
        UploadId::new(A, 23),
        EcProfile::new(2, 1).unwrap(),
        &[at(A, 0), at(B, 0), at(B, 1)],
        &bytes,
        async {},
    )
    .await
    .unwrap()
    .layout;

    // Flip a byte of shard 1 on B, then rebuild it where it is.
    let path = b
        .disk_root(DiskId(0))
        .join(format::final_path(&digest, &layout.upload, 1));
    flip_byte(
        &path,
        format::chunk_offset(SHARD, 2) + format::CHECKSUM_BYTES + 7,
    );
    a_store
        .rebuild_shard(&layout, &digest, size, 1, at(B, 0))
        .await
        .unwrap();
    let before = a_store.counters().checksum_failures();
    assert!(
        get(&a_store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    assert_eq!(a_store.counters().checksum_failures(), before);
    assert_eq!(
        a_store.counters().reconstructions(),
        1,
        "only the rebuild decoded"
    );

    // Move shard 2 from B to A: the new file serves, the old one is deleted, and the
    // orphan sweep would also have judged it by its placement.
    a_store
        .rebuild_shard(&layout, &digest, size, 2, at(A, 1))
        .await
        .unwrap();
    let old = at(B, 1);
    layout.shards[2] = at(A, 1);
    let still_committed = {
        let layout = layout.clone();
        move |_: &berth_types::Digest, _: &UploadId, i: usize, here: ShardPlacement| {
            layout.shards.get(i) == Some(&here)
        }
    };
    assert_eq!(
        b.store
            .sweep_orphans(still_committed, Duration::ZERO)
            .await
            .unwrap(),
        1,
        "B's old copy of shard 2 is an orphan now"
    );
    let stat = b
        .client(B)
        .stat(&shard_ref(&layout, 1), &digest)
        .await
        .unwrap();
    assert!(matches!(stat, ShardStat::Present { .. }), "shard 1 stays");
    a_store
        .delete_shard(&layout, &digest, 2, old)
        .await
        .unwrap();
    let b_gone = a.store.with_peers(|_| None);
    let mut only_a = layout.clone();
    only_a.shards[1] = at(B, 0);
    assert!(get(&b_gone, &only_a, &digest, size, 0..size).await.unwrap() == bytes);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn parity_on_a_peer_rebuilds_every_stripe_of_a_long_read() {
    let a = Node::start(A, 1, 1, 0).await;
    let b = Node::start(B, 2, 1, 0).await;
    let a_store = with_peers(&a, &[&b]);
    let bytes = data(24, 7 * 2 * SHARD as usize + 5);
    let (size, digest) = (bytes.len() as u64, digest_of(&bytes));
    let layout = put_with_fault(
        &a_store,
        UploadId::new(A, 24),
        EcProfile::new(2, 1).unwrap(),
        &[at(A, 0), at(B, 0), at(B, 1)],
        &bytes,
        async {},
    )
    .await
    .unwrap()
    .layout;
    // Data shard 1 is gone: every stripe needs the parity shard from B, one stripe
    // after another.
    std::fs::remove_file(b.disk_root(DiskId(0)).join(format::final_path(
        &digest,
        &layout.upload,
        1,
    )))
    .unwrap();
    assert!(
        get(&a_store, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    // The last stripe holds 5 bytes, all in data shard 0: nothing to rebuild there.
    assert_eq!(
        a_store.counters().reconstructions(),
        layout.stripe_count(size) - 1
    );
    a.stop().await;
    b.stop().await;
}
