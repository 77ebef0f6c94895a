//! The management API under `/api/v1/`. For now the cluster: `GET
//! /api/v1/cluster/status` (this node's view: Raft term, leader, log indices,
//! membership with each member's replication progress when this node leads, its
//! disks, and every member's own report of its disks and applied state, fetched over
//! the internal listener), `POST /api/v1/cluster/members` (`{"id", "addr", "cluster_id"?}`: join a
//! node, learner first, voter once caught up; a node that already belongs to another
//! cluster is refused), `DELETE /api/v1/cluster/members/{id}[?force=true]` (refused
//! while blob layouts still place shards on the node, unless forced), and
//! `POST`/`DELETE /api/v1/cluster/members/{id}/drain` (mark a member draining, or not).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_consensus::ConsensusError;
use berth_types::NodeId;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

use crate::AppState;
use crate::repair::RepairStats;

/// One member as this node sees it.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// Highest log index the leader knows the member holds (only on the leader).
    pub matched: Option<u64>,
    /// How far the member trails the leader's log (only on the leader).
    pub lag: Option<u64>,
    /// The member's own report (its disks and applied state), or why there is none.
    pub report: Option<NodeReport>,
    pub unreachable: Option<String>,
}

/// What a node says about itself to the node answering a cluster status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: u64,
    pub state: Option<AppliedState>,
    pub disks: Vec<DiskStatus>,
    /// The node's repair counters and backlog (on the leader also the shards each
    /// draining node still holds).
    #[serde(default)]
    pub repair: RepairStats,
}

/// The internal listener's path of [`node_report`].
pub const NODE_REPORT_PATH: &str = "/internal/v1/node";
/// How long the status waits for a member's report.
const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /internal/v1/node` on the internal listener: this node's report.
pub async fn node_report(State(app): State<AppState>) -> Json<NodeReport> {
    Json(local_report(&app).await)
}

async fn local_report(app: &AppState) -> NodeReport {
    let disks = app.store.disk_stats().iter().map(DiskStatus::of).collect();
    NodeReport {
        node: app.node.0,
        state: applied_state(app).await,
        disks,
        repair: app.uploads.placer.repairs.stats(),
    }
}

/// The latest state digest computed, with the applied index it reflects. The digest
/// hashes the whole state, which takes seconds once the state holds hundreds of
/// megabytes, so it is never computed on the request path: when the node has applied
/// more since, one background task (at most one at a time) computes the digest of the
/// state as it is then, and this answer still carries the previous pair. A node whose
/// applied index stays put reports its current digest from the next request on.
async fn applied_state(app: &AppState) -> Option<AppliedState> {
    let cached = app.applied_state.lock().unwrap().clone();
    let applied = app.meta.read_local(|v| v.applied_index()).await.ok();
    let fresh = matches!((&cached, applied), (Some(c), Some(a)) if c.applied == a);
    if !fresh && !app.digesting.swap(true, Ordering::AcqRel) {
        let app = app.clone();
        tokio::spawn(async move {
            let computed = app
                .meta
                .read_local(|v| {
                    Ok(AppliedState {
                        applied: v.applied_index()?,
                        digest: hex::encode(v.state_digest()?),
                    })
                })
                .await;
            match computed {
                Ok(s) => *app.applied_state.lock().unwrap() = Some(s),
                Err(e) => tracing::warn!(error = %e, "computing the state digest"),
            }
            app.digesting.store(false, Ordering::Release);
        });
    }
    cached
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskStatus {
    pub id: u32,
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub state: String,
}

/// `GET /api/v1/cluster/status`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The cluster's id (32 hex digits), once this node has applied it.
    pub cluster_id: Option<String>,
    pub node: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub last_applied: Option<u64>,
    /// Log index the latest snapshot covers.
    pub snapshot: Option<u64>,
    /// Highest log index purged from this node's log.
    pub purged: Option<u64>,
    /// A membership change is in progress (two voter sets).
    pub joint: bool,
    pub members: Vec<MemberStatus>,
    /// Nodes marked draining (`berth cluster drain`).
    pub draining: Vec<u64>,
    pub disks: Vec<DiskStatus>,
    /// The applied state, read in one transaction: equal `applied` on two nodes
    /// means equal `digest` unless their states diverged.
    pub state: Option<AppliedState>,
}

/// A digest of this node's applied state and the log index it reflects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedState {
    pub applied: Option<u64>,
    /// SHA-256 over every state table, 64 hex digits.
    pub digest: String,
}

pub async fn cluster_status(State(app): State<AppState>) -> Json<ClusterStatus> {
    let raft = app.meta.status();
    let membership = app.meta.membership();
    let voters = membership.voters();
    let last = raft.last_log_index;
    let here = local_report(&app).await;
    let reports = join_all(membership.nodes.iter().map(|(id, addr)| {
        let app = &app;
        async move {
            if *id == app.node {
                return Ok(None);
            }
            app.proxy
                .get_json::<NodeReport>(addr, NODE_REPORT_PATH, REPORT_WAIT)
                .await
                .map(Some)
        }
    }))
    .await;
    let members = membership
        .nodes
        .iter()
        .zip(reports)
        .map(|((id, addr), report)| {
            let matched = raft
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten());
            let (report, unreachable) = match report {
                Ok(Some(r)) => (Some(r), None),
                Ok(None) => (Some(here.clone()), None),
                Err(e) => (None, Some(e)),
            };
            MemberStatus {
                id: id.0,
                addr: addr.clone(),
                voter: voters.contains(id),
                matched,
                lag: raft
                    .replication
                    .as_ref()
                    .map(|_| last.unwrap_or(0).saturating_sub(matched.unwrap_or(0))),
                report,
                unreachable,
            }
        })
        .collect();
    let cluster_id = app
        .meta
        .read_local(|v| v.cluster_id())
        .await
        .ok()
        .flatten()
        .map(|id| format!("{id:032x}"));
    let draining = app
        .meta
        .read_local(|v| v.draining())
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|n| n.0)
        .collect();
    let NodeReport { disks, state, .. } = here;
    Json(ClusterStatus {
        cluster_id,
        node: raft.node.0,
        leader: raft.leader.map(|l| l.0),
        is_leader: raft.is_leader,
        term: raft.term,
        last_log_index: raft.last_log_index,
        committed: raft.committed,
        last_applied: raft.last_applied,
        snapshot: raft.snapshot,
        purged: raft.purged,
        joint: membership.is_joint(),
        members,
        draining,
        disks,
        state,
    })
}

/// `POST /api/v1/cluster/members` body.
#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    /// The joining node's gRPC address, `host:port`.
    pub addr: String,
    /// The cluster the joining node belonged to before, if any (32 hex digits).
    #[serde(default)]
    pub cluster_id: Option<String>,
}

fn membership_error(e: ConsensusError) -> Response {
    let status = match &e {
        ConsensusError::PeerAddress { .. } => StatusCode::BAD_REQUEST,
        ConsensusError::MembershipChangeFailed { .. } => StatusCode::CONFLICT,
        ConsensusError::Unavailable { .. }
        | ConsensusError::NotLeader { .. }
        | ConsensusError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(error = %e, "membership change");
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

pub async fn join(State(app): State<AppState>, Json(req): Json<JoinRequest>) -> Response {
    if req.id == 0 {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "node ids start at 1" })),
        )
            .into_response();
    }
    if let Some(theirs) = &req.cluster_id {
        let ours = match app.meta.cluster_id().await {
            Ok(id) => format!("{id:032x}"),
            Err(e) => return membership_error(e),
        };
        if !theirs.eq_ignore_ascii_case(&ours) {
            return (
                StatusCode::CONFLICT,
                Json(serde_json::json!({
                    "error": format!(
                        "node {} belongs to cluster {theirs}, this is cluster {ours}; \
                         a node joins only the cluster it was made for (use an empty data folder)",
                        req.id
                    )
                })),
            )
                .into_response();
        }
    }
    match app.meta.join(NodeId(req.id), req.addr).await {
        Ok(()) => cluster_status(State(app)).await.into_response(),
        Err(e) => membership_error(e),
    }
}

/// `DELETE /api/v1/cluster/members/{id}` query.
#[derive(Debug, Default, Deserialize)]
pub struct RemoveQuery {
    /// Remove the member even though blob layouts still place shards on it: for a
    /// node lost for good, whose shards repair then rebuilds from their stripes.
    #[serde(default)]
    pub force: bool,
}

/// Layouts read per metadata read while counting a member's shards.
const COUNT_PAGE: usize = 1024;

/// `DELETE /api/v1/cluster/members/{id}`: takes a member out of the cluster. Refused
/// (409) while blob layouts still place shards on it, unless `?force=true`: removing it
/// would leave those stripes one shard short until repair rebuilds them, so a node
/// that is still up is drained first (`berth cluster drain`).
pub async fn remove(
    State(app): State<AppState>,
    Path(id): Path<u64>,
    Query(q): Query<RemoveQuery>,
) -> Response {
    if !q.force {
        match shards_on(&app, NodeId(id)).await {
            Ok(0) => {}
            Ok(held) => {
                return (
                    StatusCode::CONFLICT,
                    Json(serde_json::json!({ "error": format!(
                        "node {id} still holds {held} shards: drain it first (berth cluster \
                         drain {id}) and remove it once none are left, or, if it is lost for \
                         good, remove it with --force (repair then rebuilds its shards from \
                         the rest of their stripes)"
                    ) })),
                )
                    .into_response();
            }
            Err(e) => return membership_error(e),
        }
    }
    match app.meta.remove(NodeId(id)).await {
        Ok(()) => cluster_status(State(app)).await.into_response(),
        Err(e) => membership_error(e),
    }
}

/// How many shards the committed blob layouts place on `node`, read page by page.
async fn shards_on(app: &AppState, node: NodeId) -> Result<u64, ConsensusError> {
    let mut after: Option<berth_types::Digest> = None;
    let mut held = 0u64;
    loop {
        let from = after.clone();
        let page = app
            .meta
            .read(move |v| v.blobs_after(from.as_ref(), COUNT_PAGE))
            .await?;
        let Some(last) = page.last() else {
            return Ok(held);
        };
        after = Some(last.digest.clone());
        held += page
            .iter()
            .filter_map(|r| match &r.layout {
                berth_types::BlobLayout::Striped(l) => Some(l),
                berth_types::BlobLayout::Inline(_) => None,
            })
            .map(|l| l.shards.iter().filter(|p| p.node == node).count() as u64)
            .sum::<u64>();
        if page.len() < COUNT_PAGE {
            return Ok(held);
        }
    }
}

/// `POST /api/v1/cluster/members/{id}/drain`: marks a member draining through Raft.
/// Placement gives it no new shards and the leader's repair scan moves every shard it
/// holds onto other members; once the leader's report shows none left
/// (`repair.drain_shards_left`), removing it loses no redundancy.
pub async fn drain(State(app): State<AppState>, Path(id): Path<u64>) -> Response {
    set_draining(app, id, true).await
}

/// `DELETE /api/v1/cluster/members/{id}/drain`: the member takes shards again; shards
/// already moved stay where they are.
pub async fn undrain(State(app): State<AppState>, Path(id): Path<u64>) -> Response {
    set_draining(app, id, false).await
}

async fn set_draining(app: AppState, id: u64, draining: bool) -> Response {
    let node = NodeId(id);
    if draining && !app.meta.membership().nodes.contains_key(&node) {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("node {id} is not a member") })),
        )
            .into_response();
    }
    match app
        .meta
        .propose(berth_consensus::CommandV1::SetDraining { node, draining })
        .await
    {
        Ok(_) => cluster_status(State(app)).await.into_response(),
        Err(e) => membership_error(e),
    }
}
