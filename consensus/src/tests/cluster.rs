//! Clustered metadata over the real gRPC transport: tonic servers on loopback
//! ephemeral ports inside the test process, each node with its own redb directory.
//! Proves that three founding nodes elect a leader and apply a proposal everywhere,
//! that followers forward writes and serve linearizable reads,
//! that losing the leader elects another one which accepts writes while the old one
//! restarts from its directory and catches up, and that a learner added after the log
//! was compacted catches up through a streamed snapshot and can be promoted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_types::NodeId;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::{inline, repo, sha, upload};
use crate::cluster::{ClusterInit, RaftTuning};
use crate::error::ConsensusError;
use crate::grpc::RaftGrpcService;
use crate::handle::Metadata;
use crate::model::{Command, Outcome};

/// Every wait in these tests gives up after this long.
const WAIT: Duration = Duration::from_secs(20);
/// How often a wait polls.
const POLL: Duration = Duration::from_millis(50);

fn tuning() -> RaftTuning {
    RaftTuning {
        heartbeat: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        ..RaftTuning::default()
    }
}

/// A running tonic server for one node's Raft service.
struct Served {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    fn start(listener: TcpListener, service: RaftGrpcService) -> Served {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    stopped.await.ok();
                }),
        );
        Served { stop, task }
    }

    /// Graceful: open HTTP/2 connections are closed, so peers redial the next server.
    async fn stop(self) {
        self.stop.send(()).ok();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the raft server stops within the wait")
            .unwrap()
            .unwrap();
    }
}

/// Binds `addr`, retrying while the port of a just-stopped server is still taken.
async fn bind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("binding {addr}: {e}; retrying");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    }
}

struct Node {
    id: NodeId,
    addr: String,
    dir: PathBuf,
    meta: Metadata,
    served: Served,
}

impl Node {
    async fn open(
        id: NodeId,
        dir: &Path,
        listener: TcpListener,
        init: ClusterInit,
        tuning: &RaftTuning,
    ) -> Node {
        let addr = listener.local_addr().unwrap().to_string();
        let (meta, service) = Metadata::open_cluster(dir, id, addr.clone(), init, tuning)
            .await
            .unwrap();
        Node {
            id,
            addr,
            dir: dir.to_owned(),
            meta,
            served: Served::start(listener, service),
        }
    }

    /// Stops Raft first, then the server, as the node binary would.
    async fn stop(self) -> (NodeId, String, PathBuf) {
        self.meta.shutdown().await.unwrap();
        self.served.stop().await;
        (self.id, self.addr, self.dir)
    }
}

/// Starts `n` founding nodes (ids 1..=n) that all bootstrap the same membership.
async fn found(dirs: &[TempDir], tuning: &RaftTuning) -> Vec<Node> {
    let mut listeners = Vec::new();
    for _ in dirs {
        listeners.push(bind("127.0.0.1:0").await);
    }
    let members: BTreeMap<NodeId, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (NodeId(i as u64 + 1), l.local_addr().unwrap().to_string()))
        .collect();
    let mut nodes = Vec::new();
    for (i, (dir, listener)) in dirs.iter().zip(listeners).enumerate() {
        let init = ClusterInit::Bootstrap(members.clone());
        nodes.push(Node::open(NodeId(i as u64 + 1), dir.path(), listener, init, tuning).await);
    }
    nodes
}

fn dirs(n: usize) -> Vec<TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

/// Waits until one of `nodes` is leader and all of them agree on it.
async fn agreed_leader(nodes: &[Node]) -> usize {
    let start = Instant::now();
    loop {
        let statuses: Vec<_> = nodes.iter().map(|n| n.meta.status()).collect();
        if let Some(i) = statuses.iter().position(|s| s.is_leader) {
            let leader = statuses[i].leader;
            if statuses.iter().all(|s| s.leader == leader) {
                return i;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "no agreed leader after {WAIT:?}: {statuses:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every node applied exactly the state the leader reads linearizably.
async fn converge(nodes: &[Node], leader: usize) -> [u8; 32] {
    let want = nodes[leader].meta.read(|v| v.state_digest()).await.unwrap();
    let want_applied = nodes[leader].meta.status().last_applied;
    let start = Instant::now();
    loop {
        let mut lagging = Vec::new();
        for n in nodes {
            let digest = n.meta.read_local(|v| v.state_digest()).await.unwrap();
            let status = n.meta.status();
            if digest != want || status.last_applied < want_applied {
                lagging.push(status);
            }
        }
        if lagging.is_empty() {
            return want;
        }
        assert!(
            start.elapsed() < WAIT,
            "after {WAIT:?} these nodes lag the leader (node {}, applied {want_applied:?}): \
             {lagging:#?}",
            nodes[leader].id
        );
        tokio::time::sleep(POLL).await;
    }
}

fn upload_cmd(n: u128) -> Command {
    Command::CreateUpload {
        id: upload(n),
        repo: repo("team/app"),
        at_ms: n as u64,
    }
}

async fn push_blob(meta: &Metadata, n: u8) {
    assert_eq!(
        meta.propose(upload_cmd(n as u128)).await.unwrap(),
        Outcome::UploadCreated
    );
    assert_eq!(
        meta.propose(Command::CommitBlob {
            repo: repo("team/app"),
            digest: sha(n),
            size: 3,
            layout: inline(n),
            upload: Some(upload(n as u128)),
            at_ms: n as u64,
        })
        .await
        .unwrap(),
        Outcome::BlobCommitted {
            existing: false,
            layout: inline(n),
        }
    );
}

async fn stop_all(nodes: Vec<Node>) {
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_apply_a_proposal_everywhere() {
    let dirs = dirs(3);
    let t0 = Instant::now();
    let nodes = found(&dirs, &tuning()).await;
    let leader = agreed_leader(&nodes).await;
    eprintln!(
        "leader node {} elected after {:?}",
        nodes[leader].id,
        t0.elapsed()
    );

    let waited = nodes[(leader + 1) % 3]
        .meta
        .wait_for_leader(WAIT)
        .await
        .unwrap();
    assert_eq!(waited, nodes[leader].id);
    let membership = nodes[leader].meta.membership();
    assert_eq!(
        membership.voters(),
        BTreeSet::from([NodeId(1), NodeId(2), NodeId(3)])
    );
    assert!(membership.learners().is_empty());
    assert_eq!(membership.nodes[&NodeId(2)], nodes[1].addr);

    push_blob(&nodes[leader].meta, 1).await;
    let digest = converge(&nodes, leader).await;
    let blob = nodes[(leader + 2) % 3]
        .meta
        .read_local(|v| v.blob(&sha(1)))
        .await
        .unwrap();
    assert!(blob.is_some(), "a follower applied the committed blob");
    eprintln!(
        "converged on {:02x?} after {:?}",
        &digest[..4],
        t0.elapsed()
    );

    // Any node serves everything: a write through one follower is forwarded to the
    // leader, and a linearizable read through the other follower sees it at once.
    let follower = &nodes[(leader + 1) % 3].meta;
    let other = &nodes[(leader + 2) % 3].meta;
    push_blob(follower, 2).await;
    let seen = other.read(|v| v.blob(&sha(2))).await.unwrap();
    assert!(
        seen.is_some(),
        "a read on a follower missed a write acknowledged through another node"
    );
    let via_follower = other.read(|v| v.state_digest()).await.unwrap();
    let via_leader = nodes[leader].meta.read(|v| v.state_digest()).await.unwrap();
    assert_eq!(via_follower, via_leader);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_takes_over_and_the_old_one_catches_up_after_restart() {
    let dirs = dirs(3);
    let tuning = tuning();
    let mut nodes = found(&dirs, &tuning).await;
    let leader = agreed_leader(&nodes).await;
    push_blob(&nodes[leader].meta, 1).await;
    converge(&nodes, leader).await;

    let old = nodes.remove(leader);
    let old_id = old.id;
    let (old_id_back, old_addr, old_dir) = old.stop().await;
    assert_eq!(old_id_back, old_id);
    let lost_at = Instant::now();

    let new_leader = agreed_leader(&nodes).await;
    let took = lost_at.elapsed();
    eprintln!(
        "node {} took over from node {old_id} after {took:?}",
        nodes[new_leader].id
    );
    assert_ne!(nodes[new_leader].id, old_id);
    assert!(took < Duration::from_secs(10), "election took {took:?}");
    push_blob(&nodes[new_leader].meta, 2).await;
    push_blob(&nodes[new_leader].meta, 3).await;
    let two = converge(&nodes, new_leader).await;

    // The old leader restarts from its directory on its address; its store already
    // holds the membership, so `Join` is ignored and it rejoins as a follower.
    let listener = bind(&old_addr).await;
    let restarted = Node::open(old_id, &old_dir, listener, ClusterInit::Join, &tuning).await;
    nodes.push(restarted);
    let leader = agreed_leader(&nodes).await;
    let three = converge(&nodes, leader).await;
    assert_eq!(
        three, two,
        "the restarted node converged on the survivors' state"
    );
    let restarted = nodes.iter().find(|n| n.id == old_id).unwrap();
    let blob = restarted
        .meta
        .read_local(|v| v.blob(&sha(3)))
        .await
        .unwrap();
    assert!(blob.is_some(), "node {old_id} applied the writes it missed");
    eprintln!(
        "node {old_id} caught up {:?} after losing leadership",
        lost_at.elapsed()
    );
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_behind_a_compacted_log_catches_up_through_a_snapshot() {
    let dirs = dirs(2);
    let tuning = RaftTuning {
        snapshot_every_entries: 50,
        logs_kept_after_snapshot: 0,
        snapshot_chunk_bytes: 1024,
        ..tuning()
    };
    let l1 = bind("127.0.0.1:0").await;
    let a1 = l1.local_addr().unwrap().to_string();
    let init = ClusterInit::Bootstrap(BTreeMap::from([(NodeId(1), a1)]));
    let founder = Node::open(NodeId(1), dirs[0].path(), l1, init, &tuning).await;
    assert_eq!(founder.meta.wait_for_leader(WAIT).await.unwrap(), NodeId(1));

    for n in 0..130u128 {
        assert_eq!(
            founder.meta.propose(upload_cmd(n)).await.unwrap(),
            Outcome::UploadCreated
        );
    }
    let start = Instant::now();
    loop {
        let m = founder.meta.raft_metrics();
        if m.purged.is_some_and(|p| p.index >= 50) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the founder did not snapshot and purge its log: snapshot {:?}, purged {:?}",
            m.snapshot,
            m.purged
        );
        tokio::time::sleep(POLL).await;
    }

    let l2 = bind("127.0.0.1:0").await;
    let learner = Node::open(NodeId(2), dirs[1].path(), l2, ClusterInit::Join, &tuning).await;
    founder
        .meta
        .add_learner(learner.id, learner.addr.clone())
        .await
        .unwrap();
    let membership = founder.meta.membership();
    assert_eq!(membership.learners(), BTreeSet::from([NodeId(2)]));
    assert_eq!(membership.voters(), BTreeSet::from([NodeId(1)]));

    let nodes = vec![founder, learner];
    let digest = converge(&nodes, 0).await;
    let m = nodes[1].meta.raft_metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index >= 50),
        "node 2 caught up without installing a snapshot: {m:?}"
    );
    eprintln!("learner caught up through a snapshot at {:?}", m.snapshot);

    let promoted = nodes[0]
        .meta
        .change_membership(BTreeSet::from([NodeId(1), NodeId(2)]))
        .await
        .unwrap();
    assert_eq!(promoted.voters(), BTreeSet::from([NodeId(1), NodeId(2)]));
    assert!(!promoted.is_joint());
    push_blob(&nodes[0].meta, 7).await;
    let after = converge(&nodes, 0).await;
    assert_ne!(after, digest);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_voter_store_grows_into_a_cluster() {
    let dirs = dirs(2);
    let tuning = tuning();
    let single = Metadata::open_single(dirs[0].path(), NodeId(1))
        .await
        .unwrap();
    push_blob(&single, 1).await;
    let before = single.read(|v| v.state_digest()).await.unwrap();
    single.shutdown().await.unwrap();
    drop(single);

    // Reopened as a cluster member: the store already has its single-voter
    // membership, so `Join` is ignored and the node elects itself again.
    let l1 = bind("127.0.0.1:0").await;
    let founder = Node::open(NodeId(1), dirs[0].path(), l1, ClusterInit::Join, &tuning).await;
    assert_eq!(founder.meta.wait_for_leader(WAIT).await.unwrap(), NodeId(1));
    assert_eq!(founder.meta.membership().nodes[&NodeId(1)], "");
    assert_eq!(
        founder.meta.read(|v| v.state_digest()).await.unwrap(),
        before
    );
    founder
        .meta
        .set_address(NodeId(1), founder.addr.clone())
        .await
        .unwrap();
    assert_eq!(founder.meta.membership().nodes[&NodeId(1)], founder.addr);

    let l2 = bind("127.0.0.1:0").await;
    let joiner = Node::open(NodeId(2), dirs[1].path(), l2, ClusterInit::Join, &tuning).await;
    founder
        .meta
        .add_learner(joiner.id, joiner.addr.clone())
        .await
        .unwrap();
    let nodes = vec![founder, joiner];
    converge(&nodes, 0).await;
    nodes[0]
        .meta
        .change_membership(BTreeSet::from([NodeId(1), NodeId(2)]))
        .await
        .unwrap();
    push_blob(&nodes[0].meta, 2).await;
    converge(&nodes, 0).await;
    assert_eq!(
        nodes[1].meta.membership().voters(),
        BTreeSet::from([NodeId(1), NodeId(2)])
    );
    stop_all(nodes).await;
}

#[tokio::test]
async fn open_cluster_refuses_bad_addresses_and_a_founding_map_without_this_node() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = tuning();
    let bad = Metadata::open_cluster(
        dir.path(),
        NodeId(1),
        "not an address".into(),
        ClusterInit::Join,
        &tuning,
    )
    .await;
    assert!(matches!(bad, Err(ConsensusError::PeerAddress { .. })));
    let elsewhere = ClusterInit::Bootstrap(BTreeMap::from([(NodeId(2), "127.0.0.1:1".into())]));
    let missing = Metadata::open_cluster(
        dir.path(),
        NodeId(1),
        "127.0.0.1:2".into(),
        elsewhere,
        &tuning,
    )
    .await;
    assert!(matches!(
        missing,
        Err(ConsensusError::FoundingMembership {
            node: NodeId(1),
            ..
        })
    ));
}

// Proves that a node cut off from a quorum never acknowledges a write or serves a read
// it cannot prove current: both end in `Unavailable` within the forwarding deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_quorum_refuses_writes_and_reads() {
    let dirs = dirs(3);
    let mut nodes = found(&dirs, &tuning()).await;
    let leader = agreed_leader(&nodes).await;
    push_blob(&nodes[leader].meta, 1).await;
    converge(&nodes, leader).await;
    let lone = nodes.remove((leader + 1) % 3);
    for node in nodes {
        node.stop().await;
    }
    let started = Instant::now();
    let write = lone.meta.propose(upload_cmd(7)).await;
    assert!(
        matches!(
            write,
            Err(ConsensusError::Unavailable { .. } | ConsensusError::CommitUnknown { .. })
        ),
        "a lone node answered a write with {write:?}"
    );
    let read = lone.meta.read(|v| v.blob(&sha(1))).await;
    assert!(
        matches!(read, Err(ConsensusError::Unavailable { .. })),
        "a lone node answered a read with {read:?}"
    );
    assert!(
        started.elapsed() < WAIT,
        "refusing took {:?}",
        started.elapsed()
    );
    lone.stop().await;
}

// Proves that a new node joins a running cluster through any member (a follower
// forwards the change to the leader), becomes a voter once caught up, sees every
// earlier write, and is removed again through another member; repeating either change
// is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_leaves_through_any_member() {
    let dirs = dirs(4);
    let mut nodes = found(&dirs[..3], &tuning()).await;
    let leader = agreed_leader(&nodes).await;
    push_blob(&nodes[leader].meta, 1).await;
    let listener = bind("127.0.0.1:0").await;
    let newcomer = Node::open(
        NodeId(4),
        dirs[3].path(),
        listener,
        ClusterInit::Join,
        &tuning(),
    )
    .await;
    let follower = (leader + 1) % 3;
    nodes[follower]
        .meta
        .join(newcomer.id, newcomer.addr.clone())
        .await
        .unwrap();
    nodes[follower]
        .meta
        .join(newcomer.id, newcomer.addr.clone())
        .await
        .unwrap();
    let voters = nodes[leader].meta.membership().voters();
    assert_eq!(
        voters,
        BTreeSet::from([NodeId(1), NodeId(2), NodeId(3), NodeId(4)])
    );
    nodes.push(newcomer);
    converge(&nodes, leader).await;
    let seen = nodes[3].meta.read(|v| v.blob(&sha(1))).await.unwrap();
    assert!(
        seen.is_some(),
        "the new voter does not see an earlier write"
    );

    let other = (leader + 2) % 3;
    nodes[other].meta.remove(NodeId(4)).await.unwrap();
    nodes[other].meta.remove(NodeId(4)).await.unwrap();
    let start = Instant::now();
    while nodes[leader]
        .meta
        .membership()
        .nodes
        .contains_key(&NodeId(4))
    {
        assert!(start.elapsed() < WAIT, "node 4 is still a member");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        nodes[leader].meta.membership().voters(),
        BTreeSet::from([NodeId(1), NodeId(2), NodeId(3)])
    );
    push_blob(&nodes[leader].meta, 2).await;
    stop_all(nodes).await;
}

// Proves that a leader refuses a forwarded command proposed longer ago than the
// forwarding window (one delayed in a partition, delivered after its proposer gave
// up), so it never takes effect, while a fresh one with the same content applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_command_older_than_the_window_is_refused() {
    use crate::grpc::forward::{FORWARD_ACCEPT_WINDOW, ForwardReply, Forwarder};
    use crate::model::VersionedCommand;

    let dirs = dirs(2);
    let nodes = found(&dirs, &tuning()).await;
    let leader = agreed_leader(&nodes).await;
    let forwarder = Forwarder::new(crate::grpc::Dialer::default());
    let now = crate::handle::now_ms();
    let stale = VersionedCommand::tracked(
        upload_cmd(1),
        now - FORWARD_ACCEPT_WINDOW.as_millis() as u64 - 1000,
    );
    let reply = forwarder
        .propose(nodes[leader].id.0, &nodes[leader].addr, &stale)
        .await
        .unwrap();
    assert!(
        matches!(reply, ForwardReply::Expired { age_ms } if age_ms > FORWARD_ACCEPT_WINDOW.as_millis() as u64),
        "{reply:?}"
    );
    converge(&nodes, leader).await;
    for n in &nodes {
        assert!(
            n.meta
                .read_local(|v| v.upload(&upload(1)))
                .await
                .unwrap()
                .is_none()
        );
    }

    let fresh = VersionedCommand::tracked(upload_cmd(1), crate::handle::now_ms());
    assert_eq!(
        forwarder
            .propose(nodes[leader].id.0, &nodes[leader].addr, &fresh)
            .await
            .unwrap(),
        ForwardReply::Applied(Outcome::UploadCreated)
    );
    stop_all(nodes).await;
}
