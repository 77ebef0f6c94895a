//! [`Metadata`]: the handle the rest of berth uses to propose commands, read the
//! registry state linearizably, watch Raft status and shut down.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_types::NodeId;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, Fatal, InitializeError, LinearizableReadError, RaftError};
use openraft::network::NetSnapshot;
use openraft::{Config, Raft, RaftNetworkFactory, ReadPolicy, ServerState};
use redb::{Database, Durability, ReadableDatabase};

use crate::db::{self, blocking};
use crate::error::{ConsensusError, Unavailability};
use crate::log_store::LogStore;
use crate::model::{Command, Outcome, VersionedCommand};
use crate::network::NoPeers;
use crate::state_machine::{SnapshotData, StateMachineStore};
use crate::type_config::{Peer, TypeConfig};
use crate::view::StateView;

/// How long opening waits for this node to become leader. A single voter elects
/// itself within one election timeout (a few hundred milliseconds); the margin covers
/// re-applying a long log on restart.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Raft status for metrics and readiness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub is_leader: bool,
}

/// The metadata store of one node: a Raft member whose log and state machine live in
/// one redb file. Cheap to clone. Call [`Metadata::shutdown`] before the last clone is
/// dropped: Raft's tasks own the store and run until they are told to stop.
#[derive(Clone)]
pub struct Metadata {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    raft: Raft<TypeConfig, StateMachineStore>,
    db: Arc<Database>,
    /// Set once shutdown starts, so new requests fail fast with `ShuttingDown`.
    closing: AtomicBool,
    /// Held while shutting down; `true` once done, which makes shutdown idempotent.
    stopped: tokio::sync::Mutex<bool>,
}

fn fatal(f: Fatal<TypeConfig>) -> ConsensusError {
    match f {
        Fatal::Stopped => ConsensusError::ShuttingDown,
        other => ConsensusError::Halted(other),
    }
}

impl Metadata {
    /// Opens or creates the store in `dir` (creates `dir`), starts Raft with this node
    /// id, and on first start initializes a single-voter membership. Returns once a
    /// leader exists.
    pub async fn open_single(dir: &Path, node: NodeId) -> Result<Metadata, ConsensusError> {
        Metadata::start(dir, node, NoPeers).await
    }

    /// Starts a member with the given transport and bootstraps a single-voter group if
    /// the store is pristine.
    async fn start<N>(dir: &Path, node: NodeId, network: N) -> Result<Metadata, ConsensusError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        let db = db::open(dir).await?;
        let config = Config {
            cluster_name: "berth-metadata".to_owned(),
            ..Config::default()
        }
        .validate()
        .map_err(ConsensusError::Config)?;
        let raft = Raft::new(
            node.0,
            Arc::new(config),
            network,
            LogStore::new(db.clone()),
            StateMachineStore::new(db.clone()),
        )
        .await
        .map_err(fatal)?;

        if !raft.is_initialized().await.map_err(fatal)? {
            match raft
                .initialize(BTreeMap::from([(node.0, Peer::default())]))
                .await
            {
                Ok(()) => tracing::info!(%node, "initialized a single-voter metadata group"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(RaftError::APIError(e)) => return Err(ConsensusError::Initialize(e)),
                Err(RaftError::Fatal(f)) => return Err(fatal(f)),
            }
        }

        let waited = raft
            .wait(Some(LEADER_WAIT))
            .current_leader(node.0, "single voter elects itself")
            .await;
        if waited.is_err() {
            raft.shutdown().await.ok();
            return Err(ConsensusError::Unavailable {
                cause: Unavailability::NoLeader {
                    waited_ms: LEADER_WAIT.as_millis() as u64,
                },
            });
        }

        Ok(Metadata {
            inner: Arc::new(Inner {
                node,
                raft,
                db,
                closing: AtomicBool::new(false),
                stopped: tokio::sync::Mutex::new(false),
            }),
        })
    }

    fn check_open(&self) -> Result<(), ConsensusError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(ConsensusError::ShuttingDown);
        }
        Ok(())
    }

    /// Proposes one command through Raft; returns once it is committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ConsensusError> {
        self.check_open()?;
        match self
            .inner
            .raft
            .client_write(VersionedCommand::from(cmd))
            .await
        {
            Ok(resp) => Ok(resp
                .data
                .expect("the state machine answers every command entry with an outcome")),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader {
                    leader: f.leader_id.map(NodeId),
                })
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Err(ConsensusError::CommitUnknown {
                    leader: f.leader_id.map(NodeId),
                })
            }
            Err(RaftError::APIError(e)) => Err(ConsensusError::WriteRefused(e)),
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// Linearizable read: confirms leadership with a read-index round, waits until the
    /// state machine has applied up to that index, then runs `f` on a consistent read
    /// snapshot of the state machine on a blocking thread.
    pub async fn read<R, F>(&self, f: F) -> Result<R, ConsensusError>
    where
        R: Send + 'static,
        F: FnOnce(&StateView) -> Result<R, ConsensusError> + Send + 'static,
    {
        self.check_open()?;
        match self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => {}
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                return Err(ConsensusError::NotLeader {
                    leader: f.leader_id.map(NodeId),
                });
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                return Err(ConsensusError::Unavailable {
                    cause: Unavailability::NoQuorum,
                });
            }
            Err(RaftError::Fatal(f)) => return Err(fatal(f)),
        }
        let db = self.inner.db.clone();
        blocking(move || f(&StateView::new(db.begin_read()?))).await
    }

    /// Status for metrics and `/readyz`.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        RaftStatus {
            node: self.inner.node,
            term: metrics.current_term,
            leader: metrics.current_leader.map(NodeId),
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|l| l.index),
            is_leader: metrics.state == ServerState::Leader
                && metrics.current_leader == Some(self.inner.node.0),
        }
    }

    /// Stops Raft and flushes the store; idempotent. Requests made after it starts
    /// fail with `ShuttingDown`.
    pub async fn shutdown(&self) -> Result<(), ConsensusError> {
        let mut stopped = self.inner.stopped.lock().await;
        if *stopped {
            return Ok(());
        }
        self.inner.closing.store(true, Ordering::Release);
        self.inner.raft.shutdown().await?;
        // Applies commit without fsync (see `state_machine`); one durable commit makes
        // everything applied so far durable, so a restart need not re-apply it.
        let db = self.inner.db.clone();
        blocking(move || {
            db::write(&db, Durability::Immediate)?.commit()?;
            Ok(())
        })
        .await?;
        *stopped = true;
        tracing::info!(node = %self.inner.node, "metadata stopped");
        Ok(())
    }
}
