//! [`RaftGrpcService`]: the receiving end of the Raft transport. Decodes each RPC,
//! checks it is addressed to this node, hands it to the local Raft and encodes the
//! answer.

use std::path::PathBuf;
use std::sync::Arc;

use openraft::Raft;
use openraft::errors::RaftError;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use super::RpcRefusal;
use super::forward::{ForwardReply, ReadIndexReply};
use super::limits::{RPC_MESSAGE_BYTES_MAX, SNAPSHOT_IDLE_MAX};
use super::pb::raft_server::{Raft as RaftRpc, RaftServer};
use super::pb::{RaftReply, RaftRequest, SnapshotChunk};
use super::wire::{self, SnapshotAssembly};
use crate::model::VersionedCommand;
use crate::state_machine::StateMachineStore;
use crate::type_config::TypeConfig;
use openraft::ReadPolicy;
use openraft::errors::{ClientWriteError, LinearizableReadError};

/// The Raft gRPC service of one node. Cheap to clone. Mount it with
/// [`RaftGrpcService::into_server`] on the node's internal gRPC listener before peers
/// need to reach this node. After [`Metadata::shutdown`](crate::Metadata::shutdown)
/// it answers every RPC with `UNAVAILABLE`.
#[derive(Clone)]
pub struct RaftGrpcService {
    node: u64,
    raft: Raft<TypeConfig, StateMachineStore>,
    /// Where received snapshots are staged: the state machine's snapshot folder.
    snapshots: Arc<PathBuf>,
}

/// Protocol RPCs fail only when Raft itself has stopped.
fn halted(e: RaftError<TypeConfig>) -> RpcRefusal {
    match e {
        RaftError::Fatal(f) => RpcRefusal::Halted(f),
        RaftError::APIError(never) => match never {},
    }
}

/// The next message of a snapshot stream, waiting at most `SNAPSHOT_IDLE_MAX`.
async fn next_message(
    stream: &mut Streaming<SnapshotChunk>,
) -> Result<Option<SnapshotChunk>, Status> {
    match tokio::time::timeout(SNAPSHOT_IDLE_MAX, stream.message()).await {
        Ok(msg) => msg,
        Err(_) => Err(RpcRefusal::SnapshotStalled {
            waited_ms: SNAPSHOT_IDLE_MAX.as_millis() as u64,
        }
        .into()),
    }
}

impl RaftGrpcService {
    pub(crate) fn new(
        node: u64,
        raft: Raft<TypeConfig, StateMachineStore>,
        snapshots: PathBuf,
    ) -> RaftGrpcService {
        RaftGrpcService {
            node,
            raft,
            snapshots: Arc::new(snapshots),
        }
    }

    /// The tonic server for this service, with berth's message size limits.
    pub fn into_server(self) -> RaftServer<RaftGrpcService> {
        RaftServer::new(self)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
    }

    /// Decodes a request after checking it is meant for this node.
    fn open<T: DeserializeOwned>(
        &self,
        what: &'static str,
        request: Request<RaftRequest>,
    ) -> Result<T, RpcRefusal> {
        let request = request.into_inner();
        if request.target != self.node {
            return Err(RpcRefusal::WrongNode {
                addressed: request.target,
                this: self.node,
            });
        }
        wire::decode(what, &request.payload)
    }

    async fn receive_snapshot(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<RaftReply, Status> {
        let first = next_message(&mut stream)
            .await?
            .ok_or(RpcRefusal::SnapshotWithoutHeader)?;
        let mut assembly = SnapshotAssembly::start(self.node, first, &self.snapshots)?;
        // Bounded: every message adds at least one byte or is refused, and the total is
        // bounded by the declared length, itself bounded by `SNAPSHOT_BYTES_MAX`.
        while let Some(msg) = next_message(&mut stream).await? {
            assembly.push(msg)?;
        }
        let (vote, snapshot) = assembly.finish().await?;
        let resp = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(RpcRefusal::Halted)?;
        Ok(wire::reply(&resp))
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftGrpcService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.open("append-entries request", request)?;
        let resp = self.raft.append_entries(req).await.map_err(halted)?;
        Ok(Response::new(wire::reply(&resp)))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req: VoteRequest<TypeConfig> = self.open("vote request", request)?;
        let resp = self.raft.vote(req).await.map_err(halted)?;
        Ok(Response::new(wire::reply(&resp)))
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req: VoteRequest<TypeConfig> = self.open("pre-vote request", request)?;
        let resp = self.raft.pre_vote(req).await.map_err(halted)?;
        Ok(Response::new(wire::reply(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        Ok(Response::new(
            self.receive_snapshot(request.into_inner()).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req: TransferLeaderRequest<TypeConfig> =
            self.open("transfer-leader request", request)?;
        let resp = self
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(RpcRefusal::Halted)?;
        Ok(Response::new(wire::reply(&resp)))
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let cmd: VersionedCommand = self.open("forwarded command", request)?;
        if let VersionedCommand::Tracked { at_ms, .. } = &cmd {
            let age_ms = crate::handle::now_ms().saturating_sub(*at_ms);
            if age_ms > super::forward::FORWARD_ACCEPT_WINDOW.as_millis() as u64 {
                tracing::info!(age_ms, command = %cmd, "refusing a forwarded command older than the forwarding window");
                return Ok(Response::new(wire::reply(&ForwardReply::Expired {
                    age_ms,
                })));
            }
        }
        let reply = match self.raft.client_write(cmd).await {
            Ok(resp) => ForwardReply::Applied(
                resp.data
                    .expect("the state machine answers every command entry with an outcome"),
            ),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                ForwardReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            Err(RaftError::Fatal(f)) => return Err(RpcRefusal::Halted(f).into()),
            // The entry was discarded by a leader change, or refused for a membership
            // reason: whether it commits later is unknown to this node.
            Err(RaftError::APIError(e)) => {
                tracing::warn!(error = %e, "forwarded command not confirmed");
                ForwardReply::CommitUnknown { leader: None }
            }
        };
        Ok(Response::new(wire::reply(&reply)))
    }

    async fn membership(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let change: crate::membership::MembershipChange =
            self.open("membership change", request)?;
        let reply = crate::membership::apply(&self.raft, change).await;
        Ok(Response::new(wire::reply(&reply)))
    }

    async fn read_index(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let () = self.open("read-index request", request)?;
        let reply = match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => ReadIndexReply::Index(Some(read.log_id().index())),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                ReadIndexReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                ReadIndexReply::NoQuorum
            }
            Err(RaftError::Fatal(f)) => return Err(RpcRefusal::Halted(f).into()),
        };
        Ok(Response::new(wire::reply(&reply)))
    }
}
