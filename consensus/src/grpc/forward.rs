//! Any node serves every request: a command proposed on a follower is forwarded to the
//! leader (`Forward`), and a linearizable read on a follower first asks the leader for
//! its read index (`ReadIndex`), then waits until the local state machine has applied
//! that index before reading locally. The replies say who the leader is when the
//! addressed node is not, so the caller can retry there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::pb::raft_client::RaftClient;
use super::{Dialer, endpoint, wire};
use crate::error::{ConsensusError, Unavailability};
use crate::model::{Outcome, VersionedCommand};

/// How long one forwarded call may take.
pub(crate) const FORWARD_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// What the leader answers to a forwarded command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Applied(Outcome),
    NotLeader {
        leader: Option<u64>,
    },
    /// The leader lost leadership while the command was in flight.
    CommitUnknown {
        leader: Option<u64>,
    },
    /// The command was proposed longer ago than [`FORWARD_ACCEPT_WINDOW`] by the
    /// leader's clock, so the leader did not propose it: its proposer has given up on
    /// it (or will before an answer could reach it), and a write it was told failed must
    /// not take effect later.
    Expired {
        age_ms: u64,
    },
}

/// How old (by the proposer's clock, read against the leader's) a forwarded command
/// may be when the leader proposes it. Equal to the proposer's forwarding deadline, so
/// a command delayed in the network (a partition that heals, a paused node that
/// resumes) cannot take effect long after its proposer answered that it failed.
pub(crate) const FORWARD_ACCEPT_WINDOW: Duration = crate::handle::FORWARD_DEADLINE;

/// What the leader answers to a read-index request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    /// Every write acknowledged before the request is at or below this log index.
    Index(Option<u64>),
    NotLeader {
        leader: Option<u64>,
    },
    NoQuorum,
}

/// Lazily connected channels to peers, by address.
#[derive(Default)]
pub(crate) struct Forwarder {
    dialer: Dialer,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    /// A forwarder that opens its channels with `dialer`.
    pub(crate) fn new(dialer: Dialer) -> Forwarder {
        Forwarder {
            dialer,
            channels: Mutex::default(),
        }
    }

    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, ConsensusError> {
        let mut channels = self.channels.lock().expect("forwarder lock poisoned");
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = self.dialer.channel(endpoint(addr)?);
                channels.insert(addr.to_owned(), c.clone());
                c
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(super::limits::RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(super::limits::RPC_MESSAGE_BYTES_MAX))
    }

    /// Sends `cmd` to `leader` at `addr`.
    pub(crate) async fn propose(
        &self,
        leader: u64,
        addr: &str,
        cmd: &VersionedCommand,
    ) -> Result<ForwardReply, ConsensusError> {
        let mut client = self.client(addr)?;
        let mut request = tonic::Request::new(wire::request(leader, cmd));
        request.set_timeout(FORWARD_RPC_TIMEOUT);
        let reply = client
            .forward(request)
            .await
            .map_err(|status| unreachable(leader, status))?;
        wire::decode("forward reply", &reply.into_inner().payload).map_err(payload_error)
    }

    /// Sends a membership change to `leader` at `addr`.
    pub(crate) async fn membership(
        &self,
        leader: u64,
        addr: &str,
        change: &crate::membership::MembershipChange,
    ) -> Result<crate::membership::MembershipReply, ConsensusError> {
        let mut client = self.client(addr)?;
        let mut request = tonic::Request::new(wire::request(leader, change));
        request.set_timeout(crate::membership::CATCH_UP_MAX + FORWARD_RPC_TIMEOUT);
        let reply = client
            .membership(request)
            .await
            .map_err(|status| unreachable(leader, status))?;
        wire::decode("membership reply", &reply.into_inner().payload).map_err(payload_error)
    }

    /// Asks `leader` at `addr` for its read index.
    pub(crate) async fn read_index(
        &self,
        leader: u64,
        addr: &str,
    ) -> Result<ReadIndexReply, ConsensusError> {
        let mut client = self.client(addr)?;
        let mut request = tonic::Request::new(wire::request(leader, &()));
        request.set_timeout(FORWARD_RPC_TIMEOUT);
        let reply = client
            .read_index(request)
            .await
            .map_err(|status| unreachable(leader, status))?;
        wire::decode("read-index reply", &reply.into_inner().payload).map_err(payload_error)
    }
}

fn unreachable(leader: u64, status: tonic::Status) -> ConsensusError {
    tracing::debug!(leader, %status, "forwarding to the leader failed");
    ConsensusError::Unavailable {
        cause: Unavailability::LeaderUnreachable {
            leader: berth_types::NodeId(leader),
        },
    }
}

fn payload_error(refusal: super::RpcRefusal) -> ConsensusError {
    tracing::warn!(error = %refusal, "undecodable reply from the leader");
    ConsensusError::Unavailable {
        cause: Unavailability::NoQuorum,
    }
}
