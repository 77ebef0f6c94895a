//! The sending end of the Raft transport: [`GrpcNetwork`], openraft's network factory,
//! and [`PeerClient`], the `RaftNetworkV2` it hands out per target.
//!
//! Connections: one lazily dialed tonic channel (one HTTP/2 connection) per peer for
//! replication, heartbeats and votes, and a second one per peer for snapshots so a
//! long transfer never delays heartbeats. Channels are shared by every client openraft
//! creates for that peer and redial by themselves after a failure; a peer whose address
//! changes in the membership gets a new channel. A [`Dialer`] turns an endpoint into a
//! channel: over TCP in berth, over a simulated network in the consensus simulation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::limits::{
    CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, RPC_MESSAGE_BYTES_MAX,
    SNAPSHOT_CHUNK_BYTES_DEFAULT, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MIN,
};
use super::pb::raft_client::RaftClient;
use super::wire::{self, Snapshot};
use crate::error::ConsensusError;
use crate::state_machine::SnapshotData;
use crate::type_config::{Peer, TypeConfig, Vote};

/// The gRPC endpoint of a peer address `host:port`, with berth's connection settings
/// and, when set up, cluster TLS. Every connection between nodes (Raft, shards,
/// passed-on uploads) starts here.
pub fn peer_endpoint(addr: &str) -> Result<Endpoint, ConsensusError> {
    let invalid = |source| ConsensusError::PeerAddress {
        addr: addr.to_owned(),
        source,
    };
    let tls = super::tls::client();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(invalid)?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// How a node opens its channels to peers. [`Dialer::default`] dials TCP, the only
/// dialer berth runs with; the turmoil simulation of the consensus tests (`tests::sim`)
/// dials over its simulated network instead, with the same endpoints.
#[derive(Clone, Default)]
pub(crate) struct Dialer {
    custom: Option<Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>>,
}

impl Dialer {
    /// A dialer that builds each channel with `dial` instead of TCP.
    #[cfg(test)]
    pub(crate) fn custom(dial: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Dialer {
        Dialer {
            custom: Some(Arc::new(dial)),
        }
    }

    /// A lazily connecting channel to `endpoint`.
    pub(crate) fn channel(&self, endpoint: Endpoint) -> Channel {
        match &self.custom {
            Some(dial) => dial(endpoint),
            None => endpoint.connect_lazy(),
        }
    }
}

/// Which connection to a peer a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lane {
    Replication,
    Snapshot,
}

struct PeerChannel {
    addr: String,
    client: RaftClient<Channel>,
}

/// openraft's network factory for a clustered metadata group. Cheap to clone; clones
/// share the channels.
#[derive(Clone)]
pub(crate) struct GrpcNetwork {
    node: u64,
    dialer: Dialer,
    channels: Arc<Mutex<BTreeMap<(u64, Lane), PeerChannel>>>,
}

impl GrpcNetwork {
    /// The transport of node `node`, opening its channels with `dialer`.
    pub(crate) fn new(node: u64, dialer: Dialer) -> GrpcNetwork {
        GrpcNetwork {
            node,
            dialer,
            channels: Arc::default(),
        }
    }

    fn client(&self, target: u64, peer: &Peer, lane: Lane) -> PeerClient {
        let client = self
            .channel(target, &peer.addr, lane)
            .map_err(|e| Unreachable::new(&e));
        PeerClient {
            from: self.node,
            target,
            client,
        }
    }

    fn channel(
        &self,
        target: u64,
        addr: &str,
        lane: Lane,
    ) -> Result<RaftClient<Channel>, ConsensusError> {
        let mut channels = self
            .channels
            .lock()
            .expect("no code panics while holding the channel map");
        if let Some(c) = channels.get(&(target, lane))
            && c.addr == addr
        {
            return Ok(c.client.clone());
        }
        let client = RaftClient::new(self.dialer.channel(peer_endpoint(addr)?))
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
        // Replaces the channel of a previous address of this peer, if any: the map holds
        // at most two channels per member of the membership.
        channels.insert(
            (target, lane),
            PeerChannel {
                addr: addr.to_owned(),
                client: client.clone(),
            },
        );
        Ok(client)
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Peer) -> PeerClient {
        self.client(target, node, Lane::Replication)
    }

    async fn new_snapshot_client(&mut self, target: u64, node: &Peer) -> PeerClient {
        self.client(target, node, Lane::Snapshot)
    }
}

/// The unary RPCs of the `Raft` service.
#[derive(Debug, Clone, Copy)]
enum Unary {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
}

impl Unary {
    fn rpc_type(self) -> RPCTypes {
        match self {
            Unary::AppendEntries => RPCTypes::AppendEntries,
            Unary::Vote | Unary::PreVote => RPCTypes::Vote,
            Unary::TransferLeader => RPCTypes::TransferLeader,
        }
    }

    fn reply_name(self) -> &'static str {
        match self {
            Unary::AppendEntries => "append-entries reply",
            Unary::Vote => "vote reply",
            Unary::PreVote => "pre-vote reply",
            Unary::TransferLeader => "transfer-leader reply",
        }
    }
}

/// The client for one peer openraft sends RPCs to.
pub(crate) struct PeerClient {
    from: u64,
    target: u64,
    /// `Err` when the peer's address in the membership is not a valid endpoint: every
    /// RPC then reports the peer unreachable.
    client: Result<RaftClient<Channel>, Unreachable<TypeConfig>>,
}

impl PeerClient {
    fn timeout(&self, action: RPCTypes, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.from,
            target: self.target,
            timeout,
        }
    }

    /// Maps a failed call: the peer is down, refused or does not speak our format
    /// (back off), the deadline passed, or something transient (retry now).
    fn status_error(
        &self,
        action: RPCTypes,
        ttl: Duration,
        status: tonic::Status,
    ) -> RPCError<TypeConfig> {
        match status.code() {
            Code::Unavailable
            | Code::Cancelled
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::Unimplemented
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated => RPCError::Unreachable(Unreachable::new(&status)),
            Code::DeadlineExceeded => RPCError::Timeout(self.timeout(action, ttl)),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    async fn unary<Req, Resp>(
        &mut self,
        rpc: Unary,
        msg: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let mut client = self.client.clone().map_err(RPCError::Unreachable)?;
        let ttl = option.soft_ttl();
        let mut request = tonic::Request::new(wire::request(self.target, msg));
        request.set_timeout(ttl);
        let call = async move {
            match rpc {
                Unary::AppendEntries => client.append_entries(request).await,
                Unary::Vote => client.vote(request).await,
                Unary::PreVote => client.pre_vote(request).await,
                Unary::TransferLeader => client.transfer_leader(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(RPCError::Timeout(self.timeout(rpc.rpc_type(), ttl))),
            Ok(Err(status)) => return Err(self.status_error(rpc.rpc_type(), ttl, status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        wire::decode(rpc.reply_name(), &reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client.clone().map_err(RPCError::Unreachable)?;
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK_BYTES_DEFAULT)
            .clamp(SNAPSHOT_CHUNK_BYTES_MIN, SNAPSHOT_CHUNK_BYTES_MAX);
        let chunks = snapshot.snapshot.len().div_ceil(chunk_bytes as u64) as usize;
        // openraft's timeout for a snapshot is per message: allow it for the header and
        // every chunk, plus once more for the receiver to install.
        let ttl = option
            .soft_ttl()
            .saturating_mul(u32::try_from(chunks + 2).unwrap_or(u32::MAX));
        let header = wire::snapshot_header(self.target, &vote, &snapshot);
        let data = snapshot.snapshot;
        let messages = wire::snapshot_messages(header, data, chunk_bytes);
        let reply = match tokio::time::timeout(ttl, client.install_snapshot(messages)).await {
            Err(_) => {
                return Err(RPCError::Timeout(
                    self.timeout(RPCTypes::InstallSnapshot, ttl),
                ));
            }
            Ok(Err(status)) => {
                return Err(self.status_error(RPCTypes::InstallSnapshot, ttl, status));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        wire::decode("snapshot reply", &reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::PreVote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.send_snapshot(vote, snapshot, &option) => sent.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::TransferLeader, &req, &option).await
    }
}
