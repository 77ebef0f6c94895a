//! The Raft transport seam. openraft's `RaftNetworkFactory` is the trait a transport
//! implements; [`NoPeers`] is the transport of a single-voter group, which never has
//! anyone to send to. A clustered node uses the gRPC transport of [`crate::grpc`]
//! behind the same trait.

use std::future::Future;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};

use crate::state_machine::SnapshotData;
use crate::type_config::{Peer, TypeConfig, Vote};

/// The transport of a single-voter group: there are no peers, so every RPC reports the
/// target unreachable. openraft never calls it while the membership has one voter.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

fn unreachable(target: u64) -> Unreachable<TypeConfig> {
    Unreachable::from_string(format!(
        "node {target} is not reachable: this metadata group has a single voter and no transport"
    ))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &Peer) -> NoPeer {
        NoPeer { target }
    }
}

/// A client for a peer that cannot exist in a single-voter group.
#[derive(Debug)]
pub struct NoPeer {
    target: u64,
}

impl RaftNetworkV2<TypeConfig> for NoPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(self.target)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(self.target)))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable(self.target)))
    }
}
