//! Where the shards of a new upload go. On a single node, or with the cluster profile
//! off: its own disks, by the store's profile. In a cluster of several members
//! (`--cluster-profile auto`, the default, or a fixed `K+M`): across the members, through
//! [`place_across`] over a [`ClusterMap`] this node assembles from its own disks and
//! each voter's disk report (`GET /internal/v1/disks` on the internal listener). A
//! member that does not answer within a second is left out of the map, so new uploads
//! go around it; the map is rebuilt at most every two seconds. When the reachable
//! members cannot hold the full profile, a blob gets the default profile of the
//! reachable member count instead (2+1 becomes 1+1 while one of three nodes is down).
//! The disks of a draining member count as full: it takes no new shards. A project
//! may have its own profile (`PUT /api/v1/projects/{name}/profile`); its blobs get it
//! whenever the reachable members (or a lone node's disks) can hold it, and the
//! default above otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use berth_blobstore::{
    BlobStore, Candidate, ClusterMap, DiskState, DiskStats, NodeCandidates, StripeWriter,
    cluster_profile, place_across,
};
use berth_consensus::Metadata;
use berth_types::{DiskId, EcProfile, NodeId, UploadId};
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::admin::DiskStatus;
use crate::oci::error::{Code, OciError, OciResult};
use crate::proxy::UploadProxy;

/// The internal listener's path of [`disk_report`].
pub const DISK_REPORT_PATH: &str = "/internal/v1/disks";
/// How long a cluster map stays in use.
const MAP_TTL: Duration = Duration::from_secs(2);
/// How long a member's disk report is waited for.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// What a node tells others about its disks, for placement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskReport {
    pub node: u64,
    pub zone: Option<String>,
    pub disks: Vec<DiskStatus>,
}

/// `GET /internal/v1/disks` on the internal listener: this node's disks.
pub async fn disk_report(State(app): State<AppState>) -> Json<DiskReport> {
    Json(DiskReport {
        node: app.node.0,
        zone: app.uploads.placer.zone.clone(),
        disks: app.store.disk_stats().iter().map(DiskStatus::of).collect(),
    })
}

/// How blobs are spread over the members of a cluster of several (`--cluster-profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterProfile {
    /// Each upload stays on the disks of the node that received it.
    Off,
    /// The default: striped across the members with the profile [`cluster_profile`]
    /// suggests for the number of voters (2: 1+1, 3-4: 2+1, 5: 3+2, 6 or more: 4+2).
    #[default]
    Auto,
    /// Striped across the members with this profile.
    Fixed(EcProfile),
}

impl ClusterProfile {
    /// The profile of a new blob in a cluster of `voters`; `None` for this node's disks.
    pub fn for_voters(self, voters: usize) -> Option<EcProfile> {
        match self {
            _ if voters < 2 => None,
            ClusterProfile::Off => None,
            ClusterProfile::Auto => Some(cluster_profile(voters)),
            ClusterProfile::Fixed(p) => Some(p),
        }
    }
}

/// How a node places new blobs in a cluster.
#[derive(Debug, Clone, Default)]
pub struct PlacementConfig {
    /// How blobs are spread over the members of a cluster of several.
    pub profile: ClusterProfile,
    /// This node's failure zone; nodes without one are each their own zone.
    pub zone: Option<String>,
}

/// The cluster map in use and when it was made.
#[derive(Clone)]
struct Cached {
    made: Instant,
    voters: usize,
    map: Arc<ClusterMap>,
}

/// Chooses where new uploads go.
pub struct Placer {
    node: NodeId,
    meta: Metadata,
    store: BlobStore,
    /// The configured cluster profile.
    profile: ClusterProfile,
    /// This node's failure zone.
    zone: Option<String>,
    proxy: UploadProxy,
    cached: std::sync::Mutex<Option<Cached>>,
    /// Held by the one caller rebuilding the map.
    rebuilding: tokio::sync::Mutex<()>,
    /// Shards to rebuild, and repair's counters.
    pub repairs: std::sync::Arc<crate::repair::Repairs>,
}

impl Placer {
    pub fn new(node: NodeId, meta: Metadata, store: BlobStore, cfg: PlacementConfig) -> Placer {
        let PlacementConfig { profile, zone } = cfg;
        Placer {
            node,
            meta,
            store,
            profile,
            zone,
            proxy: UploadProxy::default(),
            cached: std::sync::Mutex::new(None),
            rebuilding: tokio::sync::Mutex::new(()),
            repairs: std::sync::Arc::default(),
        }
    }

    /// Starts the stripe writer of `upload` on the disks or members placement picks,
    /// with `project`'s own profile when it has one and the reachable members (or,
    /// alone, this node's disks) can hold it; otherwise with the cluster's default.
    pub async fn begin(
        &self,
        upload: UploadId,
        project: Option<EcProfile>,
    ) -> OciResult<StripeWriter> {
        if let Some(profile) = project {
            let map = self.map().await;
            match place_across(upload.to_string().as_bytes(), &map, profile.width()) {
                Ok(placements) => return Ok(self.store.begin_at(upload, profile, &placements)?),
                Err(e) => tracing::info!(%upload, %profile, error = %e,
                    "the project's profile cannot be placed now; the blob gets the default"),
            }
        }
        let voters = self.voters().len();
        let Some(profile) = self.profile.for_voters(voters) else {
            return Ok(self.store.begin(upload)?);
        };
        let map = self.map().await;
        let key = upload.to_string();
        let placed = match place_across(key.as_bytes(), &map, profile.width()) {
            Ok(p) => Ok((profile, p)),
            Err(e) => {
                // Members are down and the rest lack the disks for the full profile:
                // the blob gets the profile of the members that are reachable (2+1
                // becomes 1+1 on two nodes), so it still survives one more loss and
                // pushes go on during the outage. Its layout records that profile.
                let reachable = cluster_profile(map.nodes.len());
                if reachable.width() < profile.width() && reachable.m() > 0 {
                    tracing::info!(%upload, %profile, %reachable, members = map.nodes.len(),
                        "members down: the blob gets the profile of the reachable members");
                    place_across(key.as_bytes(), &map, reachable.width()).map(|p| (reachable, p))
                } else {
                    Err(e)
                }
            }
        };
        let (profile, placements) = placed.map_err(|e| {
            OciError::new(
                Code::Unavailable,
                format!(
                    "cannot place a blob of profile {profile}: {e} on the {} reachable members",
                    map.nodes.len()
                ),
            )
        })?;
        Ok(self.store.begin_at(upload, profile, &placements)?)
    }

    /// The profile a new blob gets with every member up (the configured cluster
    /// profile for the current voters), before any project's own; `None` when blobs
    /// stay on the receiving node's disks (a lone node, or the cluster profile off).
    pub fn full_profile(&self) -> Option<EcProfile> {
        self.profile.for_voters(self.voters().len())
    }

    /// Why `profile` cannot be placed on the members (or, alone, the disks) reachable
    /// now, if it cannot.
    pub async fn cannot_hold(&self, profile: EcProfile) -> Option<String> {
        let map = self.map().await;
        place_across(b"profile check", &map, profile.width())
            .err()
            .map(|e| format!("{e} on the {} reachable members", map.nodes.len()))
    }

    /// The current cluster map: rebuilt when older than [`MAP_TTL`] or when the
    /// membership changed size. One caller rebuilds (asking every member, up to
    /// [`REPORT_WAIT`] for one that is down); callers meanwhile keep using the map it
    /// replaces, so uploads never queue behind a rebuild once a map exists.
    pub async fn map(&self) -> Arc<ClusterMap> {
        let voters = self.voters();
        let current = self
            .cached
            .lock()
            .expect("cluster map lock poisoned")
            .clone();
        let usable = current.filter(|c| c.voters == voters.len());
        if let Some(c) = &usable
            && c.made.elapsed() < MAP_TTL
        {
            return c.map.clone();
        }
        let _rebuilding = match (self.rebuilding.try_lock(), &usable) {
            (Ok(guard), _) => guard,
            (Err(_), Some(stale)) => return stale.map.clone(),
            // No map yet: wait for the rebuild in progress rather than place blind.
            (Err(_), None) => self.rebuilding.lock().await,
        };
        let map = Arc::new(self.build(&voters).await);
        *self.cached.lock().expect("cluster map lock poisoned") = Some(Cached {
            made: Instant::now(),
            voters: voters.len(),
            map: map.clone(),
        });
        map
    }

    /// The voters with their gRPC addresses.
    fn voters(&self) -> Vec<(NodeId, String)> {
        let m = self.meta.membership();
        m.nodes
            .into_iter()
            .filter(|(id, _)| m.voter_sets.iter().any(|set| set.contains(id)))
            .collect()
    }

    async fn build(&self, voters: &[(NodeId, String)]) -> ClusterMap {
        let reports = join_all(voters.iter().map(|(id, addr)| async move {
            if *id == self.node {
                return Some(NodeCandidates {
                    node: self.node,
                    zone: self.zone.clone(),
                    disks: self.store.disk_stats().iter().map(candidate).collect(),
                });
            }
            match self
                .proxy
                .get_json::<DiskReport>(addr, DISK_REPORT_PATH, REPORT_WAIT)
                .await
            {
                Ok(r) if r.node == id.0 => Some(NodeCandidates {
                    node: *id,
                    zone: r.zone,
                    disks: r.disks.iter().filter_map(DiskStatus::candidate).collect(),
                }),
                Ok(r) => {
                    tracing::warn!(member = %id, answered = r.node, %addr,
                        "a member's address answers as another node; left out of placement");
                    None
                }
                Err(e) => {
                    tracing::debug!(member = %id, %addr, error = %e,
                        "member unreachable; left out of placement");
                    None
                }
            }
        }))
        .await;
        // A draining node stays in the map (it is up, and repair tells a member that
        // is down by its absence) but takes no new shards.
        let draining = self
            .meta
            .read_local(|v| v.draining())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the draining nodes; placing as if none");
                Default::default()
            });
        let mut nodes: Vec<NodeCandidates> = reports.into_iter().flatten().collect();
        for node in nodes.iter_mut().filter(|n| draining.contains(&n.node)) {
            for disk in &mut node.disks {
                disk.state = DiskState::Full;
            }
        }
        ClusterMap { nodes }
    }
}

fn candidate(d: &DiskStats) -> Candidate {
    Candidate {
        disk: d.id,
        free_bytes: d.free_bytes,
        state: d.state,
    }
}

impl DiskStatus {
    pub fn of(d: &DiskStats) -> DiskStatus {
        DiskStatus {
            id: d.id.0,
            path: d.path.clone(),
            total_bytes: d.total_bytes,
            free_bytes: d.free_bytes,
            state: format!("{:?}", d.state).to_lowercase(),
        }
    }

    /// The disk as placement sees it; a state this build does not know is not used.
    fn candidate(&self) -> Option<Candidate> {
        let state = match self.state.as_str() {
            "active" => DiskState::Active,
            "full" => DiskState::Full,
            "failed" => DiskState::Failed,
            _ => return None,
        };
        Some(Candidate {
            disk: DiskId(self.id),
            free_bytes: self.free_bytes,
            state,
        })
    }
}
