//! Changing a running cluster from any node: `join` adds a node as a learner, waits
//! until it has caught up with the leader's log, then makes it a voter; `remove` takes
//! a node out of the membership. Both run on the leader; a follower forwards them over
//! the `Membership` RPC. Both are idempotent, so a retry after a lost reply is safe.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::Raft;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use serde::{Deserialize, Serialize};

use crate::error::{ConsensusError, Unavailability};
use crate::state_machine::StateMachineStore;
use crate::type_config::{Peer, TypeConfig};

/// How long a joining learner may take to catch up before the join gives up.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(120);

/// A membership change any node may ask the leader for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    Join { id: u64, addr: String },
    Remove { id: u64 },
}

/// The leader's answer to a forwarded membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MembershipReply {
    Done,
    NotLeader {
        leader: Option<u64>,
    },
    /// The change was refused or failed on the leader; the text is the leader's error.
    Failed {
        detail: String,
    },
}

type RaftHandle = Raft<TypeConfig, StateMachineStore>;

fn voters(raft: &RaftHandle) -> BTreeSet<u64> {
    raft.metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

fn refused(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Result<(), MembershipReply> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Err(MembershipReply::NotLeader {
                leader: f.leader_id,
            })
        }
        other => Err(MembershipReply::Failed {
            detail: other.to_string(),
        }),
    }
}

/// Runs `change` on this node, which must be the leader.
pub(crate) async fn apply(raft: &RaftHandle, change: MembershipChange) -> MembershipReply {
    let result = match change {
        MembershipChange::Join { id, addr } => join(raft, id, addr).await,
        MembershipChange::Remove { id } => remove(raft, id).await,
    };
    match result {
        Ok(()) => MembershipReply::Done,
        Err(reply) => reply,
    }
}

async fn join(raft: &RaftHandle, id: u64, addr: String) -> Result<(), MembershipReply> {
    if voters(raft).contains(&id) {
        return Ok(());
    }
    raft.add_learner(id, Peer { addr: addr.clone() }, false)
        .await
        .map(|_| ())
        .or_else(refused)?;
    let target = raft.metrics().borrow_watched().last_log_index;
    let caught_up = raft
        .wait(Some(CATCH_UP_MAX))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
                    >= target
            },
            "joining learner caught up",
        )
        .await;
    match caught_up {
        Ok(_) => {}
        Err(WaitError::ShuttingDown) => {
            return Err(MembershipReply::Failed {
                detail: "the leader is shutting down".into(),
            });
        }
        Err(WaitError::Timeout(..)) => {
            return Err(MembershipReply::Failed {
                detail: format!(
                    "node {id} at {addr} did not catch up within {} s",
                    CATCH_UP_MAX.as_secs()
                ),
            });
        }
    }
    let mut ids = voters(raft);
    ids.insert(id);
    raft.change_membership(ids, false)
        .await
        .map(|_| ())
        .or_else(refused)?;
    tracing::info!(node = id, addr, "node joined as a voter");
    Ok(())
}

async fn remove(raft: &RaftHandle, id: u64) -> Result<(), MembershipReply> {
    let metrics = raft.metrics().borrow_watched().clone();
    let config = metrics.membership_config.membership();
    if config.get_node(&id).is_none() {
        return Ok(());
    }
    let mut ids: BTreeSet<u64> = config.voter_ids().collect();
    if ids.remove(&id) {
        if ids.is_empty() {
            return Err(MembershipReply::Failed {
                detail: "cannot remove the last voter".into(),
            });
        }
        raft.change_membership(ids, false)
            .await
            .map(|_| ())
            .or_else(refused)?;
    } else {
        // A learner: removing it leaves the voters as they are.
        raft.change_membership(
            openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])),
            false,
        )
        .await
        .map(|_| ())
        .or_else(refused)?;
    }
    tracing::info!(node = id, "node removed from the cluster");
    Ok(())
}

/// Maps the leader's answer to the caller's result; `None` means "retry elsewhere".
pub(crate) fn outcome(reply: MembershipReply) -> Option<Result<(), ConsensusError>> {
    match reply {
        MembershipReply::Done => Some(Ok(())),
        MembershipReply::NotLeader { .. } => None,
        MembershipReply::Failed { detail } => {
            Some(Err(ConsensusError::MembershipChangeFailed { detail }))
        }
    }
}

/// The error when no leader could be asked in time.
pub(crate) fn no_leader(waited: Duration) -> ConsensusError {
    ConsensusError::Unavailable {
        cause: Unavailability::NoLeader {
            waited_ms: waited.as_millis() as u64,
        },
    }
}
