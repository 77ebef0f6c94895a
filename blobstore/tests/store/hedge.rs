//! Hedged reads around a slow shard: node B's shard service is reached through a relay
//! that can hold B's answers, the way a hung peer (a stopped process, a stalled disk, a
//! link that stopped moving) holds them: requests reach B, nothing comes back. Proves
//! that a read and a shard rebuild go around it after the hedge threshold instead of
//! waiting for the shard service's 30 s timeout, that the threshold is paid once per
//! read, that a read without hedging does wait, that a source whose read was
//! abandoned mid-stream serves the right stripes when a later stripe needs it again,
//! that a shard with nothing to read instead is waited for, not counted, and that a
//! slow local disk holding the parity a node reads in place of a peer's shard is
//! hedged the same way.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_blobstore::{
    BlobStore, DirEntry, Disk, DiskFile, FsDisk, ShardClient, StoreConfig, format,
};
use berth_types::{Digest, DiskId, EcProfile, NodeId, StripedLayout, UploadId};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::{data, digest_of, fs_disks, get};
use crate::rpc::{A, B, Node, SHARD, at, put_at};

const C: NodeId = NodeId(3);
/// The hedge threshold of the hedging readers here.
const HEDGE: Duration = Duration::from_millis(300);
const STRIPES: usize = 20;
/// The first stripe whose parity the abandoned-source test corrupts: beyond the
/// stripes in flight when the held peer is released.
const FIRST_CORRUPT: u64 = 6;

/// A TCP relay to a shard service that can hold the service's answers: while held,
/// what the service sends stays in the relay.
struct Relay {
    addr: String,
    hold: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (hold, held) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, held.clone()));
            }
        });
        Relay { addr, hold, task }
    }

    fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; answers wait while `held` says so.
async fn relay(client: TcpStream, server: TcpStream, mut held: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        tokio::io::copy(&mut client_read, &mut server_write).await?;
        server_write.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if held.wait_for(|held| !*held).await.is_err() {
                return Ok(());
            }
            client_write.write_all(&buf[..n]).await?;
        }
    };
    let _ = tokio::join!(up, down);
}

/// A store of node C (one disk, no shard of the blob) with hedge threshold `hedge`,
/// reaching A directly and B through `relay`.
fn reader(dir: &std::path::Path, hedge: Option<Duration>, a: &Node, relay: &Relay) -> BlobStore {
    let cfg = StoreConfig {
        profile: EcProfile::SINGLE,
        shard_bytes: SHARD,
        read_hedge: hedge,
    };
    let store = BlobStore::open(C, fs_disks(dir, 1), cfg).unwrap();
    let peers: Arc<Vec<ShardClient>> = Arc::new(vec![
        a.client(A),
        ShardClient::connect_lazy(B, &relay.addr).unwrap(),
    ]);
    store.with_peers(move |node| peers.iter().find(|c| c.node() == node).cloned())
}

/// Nodes A and B (stores of `disks` disks striping `k`+`m`), a relay in front of B,
/// and a folder for readers' disks; stopped by [`Pair::stop`].
struct Pair {
    a: Node,
    b: Node,
    relay: Relay,
    dir: tempfile::TempDir,
}

impl Pair {
    async fn start(disks: u32, k: u8, m: u8) -> Pair {
        let a = Node::start(A, disks, k, m).await;
        let b = Node::start(B, disks, k, m).await;
        let relay = Relay::start(b.addr.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        Pair { a, b, relay, dir }
    }

    /// A reader (see [`reader`]) with its disk in folder `name`.
    fn reader(&self, name: &str, hedge: Option<Duration>) -> BlobStore {
        reader(&self.dir.path().join(name), hedge, &self.a, &self.relay)
    }

    async fn stop(self) {
        drop(self.relay);
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// A 2+1 blob of `STRIPES` stripes (the last one short): shard 0 on A's disk 0, shard 1
/// on B, parity on A's disk 1.
async fn blob(a: &Node, b: &Node) -> (Vec<u8>, Digest, StripedLayout) {
    let bytes = data(41, (STRIPES - 1) * 2 * SHARD as usize + 777);
    let writer = a.store.with_peers({
        let b = b.client(B);
        move |node| (node == B).then(|| b.clone())
    });
    let placements = [at(A, 0), at(B, 0), at(A, 1)];
    let layout = put_at(&writer, UploadId::new(A, 40), &placements, &bytes).await;
    let digest = digest_of(&bytes);
    (bytes, digest, layout)
}

// Proves that a read does not wait for a hung peer, and pays the threshold once: with
// B's answers held, every stripe of the blob is decoded from shard 0 and parity, and
// the whole read takes far less than one threshold per stripe (20 × 300 ms) and than
// the shard service's 30 s timeout. A reader without hedging is still waiting after
// 3 s (so the hold is real), and finishes once B answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_goes_around_a_peer_that_holds_its_answers() {
    let pair = Pair::start(3, 2, 1).await;
    let (a, b, relay) = (&pair.a, &pair.b, &pair.relay);
    let (bytes, digest, layout) = blob(a, b).await;
    let size = bytes.len() as u64;
    let hedged = pair.reader("hedged", Some(HEDGE));
    let waiting = pair.reader("waiting", None);

    // Healthy: no hedging, no decoding, and B's shard read once, in one stream (the
    // stripes, each in its own task, take their sources in order). Both readers are
    // connected to B before it hangs, as a long-running node would be.
    let before = b.store.counters().bytes_read();
    assert!(get(&hedged, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    assert_eq!(
        b.store.counters().bytes_read() - before,
        format::file_bytes(SHARD, 2, size)
    );
    assert!(
        get(&waiting, &layout, &digest, size, 0..size)
            .await
            .unwrap()
            == bytes
    );
    assert_eq!(hedged.counters().hedged_reads(), 0);
    assert_eq!(hedged.counters().reconstructions(), 0);

    relay.hold(true);
    let started = Instant::now();
    let got = get(&hedged, &layout, &digest, size, 0..size).await.unwrap();
    let took = started.elapsed();
    assert!(got == bytes);
    assert!(
        took < Duration::from_secs(3),
        "a read around a held peer took {took:?}"
    );
    let c = hedged.counters();
    assert_eq!(
        c.hedged_reads(),
        STRIPES as u64,
        "every stripe went around B"
    );
    assert_eq!(c.reconstructions(), STRIPES as u64);
    assert_eq!(c.checksum_failures(), 0);
    assert_eq!(c.shards_unavailable(), 0);

    // A range inside shard 0 of each stripe never needs B: nothing to hedge.
    let range = 2 * u64::from(SHARD) + 1..3 * u64::from(SHARD) - 1;
    let got = get(&hedged, &layout, &digest, size, range.clone())
        .await
        .unwrap();
    assert!(got == bytes[range.start as usize..range.end as usize]);
    assert_eq!(hedged.counters().hedged_reads(), STRIPES as u64);

    let pending = tokio::spawn({
        let (layout, digest) = (layout.clone(), digest.clone());
        async move { get(&waiting, &layout, &digest, size, 0..size).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !pending.is_finished(),
        "without hedging the read waits for the held peer"
    );
    relay.hold(false);
    let got = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the waiting read finishes once the peer answers")
        .unwrap()
        .unwrap();
    assert!(got == bytes);
    pair.stop().await;
}

// Proves that abandoned reads leave no wrong bytes behind: with B held, the first
// stripes are decoded around B (its chunk reads dropped mid-stream); then B answers
// again and the parity of the later stripes is corrupted, so each of them needs B
// after all. B's source, last left waiting on an earlier stripe, must serve exactly
// the stripe asked for: the read returns the right bytes, and the only checksum
// failures are the corrupted parity chunks (none from B, which would also have made
// B unavailable and failed the read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_abandoned_mid_stream_serves_the_right_stripe_later() {
    let pair = Pair::start(3, 2, 1).await;
    let (a, relay) = (&pair.a, &pair.relay);
    let (bytes, digest, layout) = blob(a, &pair.b).await;
    let size = bytes.len() as u64;
    let hedged = pair.reader("c", Some(HEDGE));
    // Connect to B before it hangs, as a long-running node would have.
    assert!(get(&hedged, &layout, &digest, size, 0..size).await.unwrap() == bytes);

    relay.hold(true);
    let mut read = Box::pin(hedged.read(&layout, &digest, size, 0..size));
    let mut got: Vec<Bytes> = Vec::new();
    // Stripes 0 and 1, two pieces each; stripes up to 3 may be in flight after them.
    for _ in 0..4 {
        got.push(read.next().await.unwrap().unwrap());
    }
    assert!(hedged.counters().hedged_reads() >= 2);
    relay.hold(false);
    let parity =
        a.disk_root(layout.shards[2].disk)
            .join(format::final_path(&digest, &layout.upload, 2));
    // Flipped in place: stripes in flight may be reading the file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&parity)
        .unwrap();
    for stripe in FIRST_CORRUPT..STRIPES as u64 {
        let at_byte = format::chunk_offset(SHARD, stripe) + format::CHECKSUM_BYTES + 7;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at_byte).unwrap();
        file.write_all_at(&[byte[0] ^ 0x5a], at_byte).unwrap();
    }
    while let Some(piece) = read.next().await {
        got.push(piece.unwrap());
    }
    assert!(got.concat() == bytes);
    let c = hedged.counters();
    assert_eq!(c.checksum_failures(), STRIPES as u64 - FIRST_CORRUPT);
    assert_eq!(c.shards_unavailable(), 0);
    pair.stop().await;
}

// Proves that repair goes around a hung peer too: shard 1, on B whose answers are
// held, is rebuilt onto C from shard 0 and parity after the threshold, not after the
// shard service's timeout; the blob then reads byte-identical from its new layout
// without touching B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_on_a_held_peer_is_rebuilt_from_the_others() {
    let pair = Pair::start(3, 2, 1).await;
    let relay = &pair.relay;
    let (bytes, digest, layout) = blob(&pair.a, &pair.b).await;
    let size = bytes.len() as u64;
    let c = pair.reader("c", Some(HEDGE));
    assert!(get(&c, &layout, &digest, size, 0..size).await.unwrap() == bytes);

    relay.hold(true);
    let started = Instant::now();
    let written = c
        .rebuild_shard(&layout, &digest, size, 1, at(C, 0))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the rebuild took {took:?}");
    assert_eq!(
        written,
        (STRIPES as u64 - 1) * u64::from(SHARD)
            + u64::from(format::stripe_shard_bytes(
                SHARD,
                2,
                size,
                STRIPES as u64 - 1
            ))
    );
    assert!(c.counters().hedged_reads() >= 1);

    let mut moved = layout.clone();
    moved.shards[1] = at(C, 0);
    let before = c.counters().hedged_reads();
    assert!(get(&c, &moved, &digest, size, 0..size).await.unwrap() == bytes);
    assert_eq!(c.counters().hedged_reads(), before);
    relay.hold(false);
    pair.stop().await;
}

// Proves that hedging never counts, or decodes, what it cannot go around: a 1+0 blob
// on a held peer has no other shard, so its read waits for the peer past the
// threshold, counts no hedged read, and returns the right bytes once the peer answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_parity_is_waited_for_and_not_counted_as_hedged() {
    let pair = Pair::start(1, 1, 0).await;
    let (a, b, relay) = (&pair.a, &pair.b, &pair.relay);
    let bytes = data(42, 5 * SHARD as usize + 99);
    let size = bytes.len() as u64;
    let digest = digest_of(&bytes);
    let writer = a.store.with_peers({
        let b = b.client(B);
        move |node| (node == B).then(|| b.clone())
    });
    let layout = put_at(&writer, UploadId::new(A, 42), &[at(B, 0)], &bytes).await;
    let c = pair.reader("c", Some(HEDGE));
    assert!(get(&c, &layout, &digest, size, 0..size).await.unwrap() == bytes);

    relay.hold(true);
    let pending = tokio::spawn({
        let (c, layout, digest) = (c.clone(), layout.clone(), digest.clone());
        async move { get(&c, &layout, &digest, size, 0..size).await }
    });
    tokio::time::sleep(3 * HEDGE).await;
    assert!(!pending.is_finished(), "nothing to read instead of B");
    relay.hold(false);
    let got = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the read finishes once the peer answers")
        .unwrap()
        .unwrap();
    assert!(got == bytes);
    let counters = c.counters();
    assert_eq!(counters.hedged_reads(), 0);
    assert_eq!(counters.reconstructions(), 0);
    pair.stop().await;
}

/// A disk whose file reads take `delay` while `slow` is set, the way a failing drive
/// retrying a sector does; everything else goes straight to the wrapped disk.
#[derive(Debug)]
struct SlowDisk {
    inner: FsDisk,
    slow: Arc<AtomicBool>,
    delay: Duration,
}

struct SlowFile {
    inner: Box<dyn DiskFile>,
    slow: Arc<AtomicBool>,
    delay: Duration,
}

impl DiskFile for SlowFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(self.delay);
        }
        self.inner.read_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl Disk for SlowDisk {
    fn id(&self) -> DiskId {
        self.inner.id()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.inner.create(path)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(SlowFile {
            inner: self.inner.open(path)?,
            slow: self.slow.clone(),
            delay: self.delay,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner.list(path)
    }

    fn total_bytes(&self) -> io::Result<u64> {
        self.inner.total_bytes()
    }

    fn free_bytes(&self) -> io::Result<u64> {
        self.inner.free_bytes()
    }
}

// Proves that a slow local parity disk is hedged like a slow peer: node A holds shard
// 0 and the parity of a 2+1 blob, B holds shard 1. Healthy, A reads the blob from its
// own two disks (the parity in place of B's shard, decoded by XOR) and asks B for
// nothing. With A's parity disk taking 2 s per read, a read takes B's shard instead
// once the parity chunk is late: far less than 2 s per stripe, hedged at most for the
// stripes already in flight, nothing decoded and the right bytes. Once the disk is
// well again, the next read goes back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_local_parity_disk_is_read_around() {
    let pair = Pair::start(3, 2, 1).await;
    let (a, b) = (&pair.a, &pair.b);
    let (bytes, digest, layout) = blob(a, b).await;
    let size = bytes.len() as u64;
    let slow = Arc::new(AtomicBool::new(false));
    let disks: Vec<Arc<dyn Disk>> = vec![
        Arc::new(FsDisk::open(a.disk_root(DiskId(0)), DiskId(0)).unwrap()),
        Arc::new(SlowDisk {
            inner: FsDisk::open(a.disk_root(DiskId(1)), DiskId(1)).unwrap(),
            slow: slow.clone(),
            delay: Duration::from_secs(2),
        }),
    ];
    // A second store of node A over A's disks, its parity disk slowed; its profile
    // only matters to writes, the blob's layout says how to read it.
    let cfg = StoreConfig {
        profile: EcProfile::SINGLE,
        shard_bytes: SHARD,
        read_hedge: Some(HEDGE),
    };
    let reader = BlobStore::open(A, disks, cfg).unwrap().with_peers({
        let b = b.client(B);
        move |node| (node == B).then(|| b.clone())
    });

    let served_by_b = || b.store.counters().bytes_read();
    let before = served_by_b();
    assert!(get(&reader, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    assert_eq!(served_by_b(), before, "a healthy read stays on A's disks");
    assert_eq!(reader.counters().hedged_reads(), 0);

    slow.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let got = get(&reader, &layout, &digest, size, 0..size).await.unwrap();
    let took = started.elapsed();
    assert!(got == bytes);
    assert!(
        took < Duration::from_secs(3),
        "a read around a slow parity disk took {took:?}"
    );
    let hedged = reader.counters().hedged_reads();
    assert!(
        (1..=2).contains(&hedged),
        "the stripes in flight when the disk was found slow went around it, then no \
         stripe asked it again: {hedged} hedged"
    );
    assert!(
        served_by_b() - before >= (STRIPES as u64 - 1) * u64::from(SHARD),
        "B served its shard for every stripe"
    );
    assert_eq!(reader.counters().reconstructions(), 0);
    assert_eq!(reader.counters().checksum_failures(), 0);

    slow.store(false, Ordering::Relaxed);
    let before = served_by_b();
    assert!(get(&reader, &layout, &digest, size, 0..size).await.unwrap() == bytes);
    assert_eq!(served_by_b(), before, "the disk is read again once well");
    pair.stop().await;
}
