//! Restriping: blobs whose layout has another profile than the one the cluster wants
//! for them now are written anew with that profile, in the background, by the Raft
//! leader. Such blobs come from outages (while members are down, `Placer::begin`
//! gives new blobs the profile of the reachable members: 1+1 instead of 2+1, 2+1
//! instead of 3+2), from a cluster that grew (a single node's 1+0, 2+1 on what is now
//! five nodes), and from a project whose own profile could not be placed when the
//! blob was written.
//!
//! The wanted profile of a blob is its project's own profile when every repository
//! linking it is in that one project, and the cluster's default for its voters
//! otherwise (`Placer::full_profile`). A blob is restriped only towards at least as
//! many parity shards as it has: a blob is never made less safe than it was written
//! (a 3+2 blob stays 3+2 when the cluster shrinks to four nodes). Blobs no repository
//! links are left to GC, and blobs linked from more repositories than
//! `PROJECT_LINKS_MAX` are left as they are (their projects are not all known).
//!
//! Only a healthy cluster restripes: every member reachable, none draining, repair's
//! backlog empty. The leader walks the blob layouts in pages (its own cursor, beside
//! repair's), one blob at a time, at most `--restripe-mib-per-sec`: the blob is read
//! through the store's reader (every chunk's checksum, and the digest of the whole
//! blob, verified), written through a `StripeWriter` placed for the wanted profile
//! under a fresh upload id, and only once every shard is durable is
//! `CommandV1::RestripeBlob` proposed. It applies only if the blob's layout still
//! belongs to the upload that was copied; refused (`LayoutChanged`: GC deleted the
//! blob, or it was written anew), the new files are removed at once. Applied, the old
//! files are removed `--restripe-old-files-secs` later (60 s): a read that looked up the
//! old layout just before the swap still finds them (a local read opens a shard file on
//! its first chunk, a peer's `GetChunks` on its call, and both keep it open through an
//! unlink). A read that looked the layout up before the swap and opens a shard only
//! after the delay fails; the client retries and gets the new layout.
//!
//! A crash (kill -9) at any step loses nothing: before the command applies, the new
//! files are orphans (no layout names their upload) and the old layout is in force;
//! after it, the old files are the orphans. The orphan sweep (`api::maintenance`)
//! removes final shard files no layout places where they are once they are older than
//! the upload TTL (judged by the files' age, so it may also take a replaced layout's
//! files before their delay is over), and the staging sweep removes staging files of
//! uploads that are not live (a restripe's upload is live on its node while it
//! writes). A layout replaced on a leader that then lost its leadership is still deleted
//! by it when due.
//!
//! Progress: restriped blobs and bytes, failures, and the blobs a complete round of the
//! walk found on another profile and could not restripe (`RestripeStats`), in the
//! repair stats of the status and in metrics.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_blobstore::{BlobStoreError, ClusterMap, Pacer, PlacementError, place_across};
use berth_consensus::{BlobRecord, CommandV1, ConsensusError, Outcome, Rejection};
use berth_types::{BlobLayout, Digest, EcProfile, StripedLayout, UploadId};
use futures::StreamExt;

use crate::AppState;
use crate::uploads::Hasher;

/// Blob layouts the walk reads at once.
const PAGE: usize = 256;
/// Pages the walk reads per pass at most (the rest of the round goes on next pass).
const PAGES_PER_PASS_MAX: usize = 16;
/// Repositories linking one blob that are looked at to find its project.
pub const PROJECT_LINKS_MAX: usize = 1_000;
/// Replaced layouts whose files wait for their deletion; restriping pauses while
/// this many wait.
const RETIRED_MAX: usize = 4_096;

/// How restriping runs (node flags).
#[derive(Debug, Clone, Copy)]
pub struct RestripeConfig {
    /// Bytes per second read and rewritten, at most; 0 turns restriping off.
    pub bytes_per_sec: u64,
    /// How long the files of a replaced layout stay for reads that began before it
    /// was replaced.
    pub old_files_delay: Duration,
}

impl Default for RestripeConfig {
    fn default() -> Self {
        RestripeConfig {
            bytes_per_sec: 32 << 20,
            old_files_delay: Duration::from_secs(60),
        }
    }
}

/// The restripe state of this node: the walk's position and counts, replaced layouts
/// waiting for their files' deletion, and counters.
#[derive(Default)]
pub struct Restripes {
    /// The upload whose files a restripe is writing now, live for the staging sweep.
    writing: Mutex<Option<UploadId>>,
    cursor: Mutex<Option<Digest>>,
    /// The Raft term the walk's counts belong to: a node that leads again later
    /// starts a fresh round instead of finishing one begun in an earlier term.
    term: Mutex<Option<u64>>,
    /// Blobs the round now running found on another profile and did not restripe.
    round_left: AtomicU64,
    /// The same for the last complete round; `None` before one completed.
    last_left: Mutex<Option<u64>>,
    retired: Mutex<VecDeque<Retired>>,
    blobs: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

/// A replaced layout whose files go at `due`.
struct Retired {
    due: Instant,
    digest: Digest,
    layout: StripedLayout,
}

/// Counters of restriping, for metrics and the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestripeStats {
    /// Blobs this node restriped (their new layout applied).
    pub restriped_blobs: u64,
    /// Bytes of content of those blobs.
    pub restriped_bytes: u64,
    /// Restripes that failed (a read, a write, placement or the proposal).
    pub failures: u64,
    /// On the leader, once a complete round of the walk has looked at every blob: the
    /// blobs that round found on another profile than the wanted one and did not
    /// restripe (the cluster was not healthy, or their restripe failed). `None`
    /// before a round completed on this node.
    pub blobs_left: Option<u64>,
    /// Replaced layouts whose shard files are not deleted yet.
    pub old_layouts_waiting: u64,
}

impl Restripes {
    /// The upload a restripe is writing now: the staging sweep keeps its files.
    pub fn writing(&self) -> Option<UploadId> {
        *self.writing.lock().expect("restripe lock poisoned")
    }

    pub fn stats(&self) -> RestripeStats {
        RestripeStats {
            restriped_blobs: self.blobs.load(Ordering::Relaxed),
            restriped_bytes: self.bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            blobs_left: *self.last_left.lock().expect("restripe lock poisoned"),
            old_layouts_waiting: self.retired.lock().expect("restripe lock poisoned").len() as u64,
        }
    }
}

fn restripes(app: &AppState) -> &Restripes {
    &app.uploads.placer.repairs.restripe
}

/// Who links a blob, as far as its wanted profile goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Links {
    /// No repository: GC's to collect.
    None,
    /// More repositories than were looked at.
    Unknown,
    /// Repositories of one project, which has its own profile.
    Project(EcProfile),
    /// Repositories of projects without their own profile, or of several projects.
    Default,
}

/// The profile a blob of profile `current` is to be restriped to, if any: its
/// project's own profile or the cluster's `default` (see [`Links`]), when that differs
/// from `current` and has at least as many parity shards.
fn restripe_to(current: EcProfile, links: &Links, default: EcProfile) -> Option<EcProfile> {
    let wanted = match links {
        Links::None | Links::Unknown => return None,
        Links::Project(p) => *p,
        Links::Default => default,
    };
    (wanted != current && wanted.m() >= current.m()).then_some(wanted)
}

/// Why a blob was not restriped.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("the wanted profile cannot be placed")]
    Place(#[from] PlacementError),
    #[error("the store failed")]
    Store(#[from] BlobStoreError),
    #[error("the blob read back has digest {found}")]
    DigestMismatch { found: Digest },
    #[error("shards {0:?} were lost while writing")]
    ShardsLost(Vec<usize>),
    #[error("the metadata failed")]
    Metadata(#[from] ConsensusError),
    #[error("unexpected outcome {0:?}")]
    Unexpected(Box<Outcome>),
}

/// Deletes the files of replaced layouts whose time has come. Runs on every node each
/// repair pass, leader or not: a leader that lost its leadership still owes them.
pub async fn delete_due(app: &AppState) {
    loop {
        let due = {
            let mut retired = restripes(app)
                .retired
                .lock()
                .expect("restripe lock poisoned");
            match retired.front() {
                Some(r) if r.due <= Instant::now() => retired.pop_front(),
                _ => None,
            }
        };
        let Some(r) = due else { return };
        delete_files(app, &r.digest, &r.layout).await;
    }
}

/// Removes the shard files of `layout`, each on its own: a file whose node does not
/// answer is left to that node's orphan sweep.
async fn delete_files(app: &AppState, digest: &Digest, layout: &StripedLayout) {
    for (index, at) in layout.shards.iter().enumerate() {
        if let Err(e) = app.store.delete_shard(layout, digest, index, *at).await {
            tracing::debug!(%digest, shard = index, node = %at.node, error = %e,
                "restripe: a shard file not removed; the orphan sweep will");
        }
    }
}

/// One restripe pass on the leader: walks pages of blob layouts from where the last
/// pass stopped, counts the blobs on another profile than the wanted one and, while
/// the cluster is healthy, restripes them one at a time until `budget` has passed.
pub async fn pass(
    app: &AppState,
    cfg: RestripeConfig,
    budget: Duration,
    map: &ClusterMap,
    unsettled: Option<&str>,
) {
    let Some(default) = app.uploads.placer.full_profile() else {
        return;
    };
    let started = Instant::now();
    let healthy = match unsettled {
        None => cfg.bytes_per_sec > 0,
        Some(why) => {
            tracing::debug!(why, "restripe: waiting for a healthy cluster");
            false
        }
    };
    let mut pacer = Pacer::new(cfg.bytes_per_sec);
    let state = restripes(app);
    let term = app.meta.status().term;
    if state
        .term
        .lock()
        .expect("restripe lock poisoned")
        .replace(term)
        != Some(term)
    {
        *state.cursor.lock().expect("restripe lock poisoned") = None;
        *state.last_left.lock().expect("restripe lock poisoned") = None;
        state.round_left.store(0, Ordering::Relaxed);
    }
    for _ in 0..PAGES_PER_PASS_MAX {
        let after = state.cursor.lock().expect("restripe lock poisoned").clone();
        let page = match app.meta.read(move |v| page_after(v, after.as_ref())).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "restripe: metadata unavailable");
                return;
            }
        };
        let complete = page.len() < PAGE;
        for (record, links) in page {
            if started.elapsed() >= budget {
                // The rest of the page waits for the next pass.
                return;
            }
            if let BlobLayout::Striped(layout) = &record.layout
                && let Some(wanted) = restripe_to(layout.profile, &links, default)
            {
                let room =
                    state.retired.lock().expect("restripe lock poisoned").len() < RETIRED_MAX;
                let done = healthy
                    && room
                    && restripe(app, cfg, map, &record, layout, wanted, &mut pacer).await;
                if !done {
                    state.round_left.fetch_add(1, Ordering::Relaxed);
                }
            }
            *state.cursor.lock().expect("restripe lock poisoned") = Some(record.digest);
        }
        if complete {
            let left = state.round_left.swap(0, Ordering::Relaxed);
            *state.last_left.lock().expect("restripe lock poisoned") = Some(left);
            *state.cursor.lock().expect("restripe lock poisoned") = None;
            return;
        }
    }
}

/// Up to [`PAGE`] blob records after `after`, each with who links it.
fn page_after(
    v: &berth_consensus::StateView,
    after: Option<&Digest>,
) -> Result<Vec<(BlobRecord, Links)>, ConsensusError> {
    let page = v.blobs_after(after, PAGE)?;
    let mut out = Vec::with_capacity(page.len());
    for record in page {
        let links = match &record.layout {
            BlobLayout::Inline(_) => Links::None,
            BlobLayout::Striped(_) => links_of(v, &record.digest)?,
        };
        out.push((record, links));
    }
    Ok(out)
}

fn links_of(v: &berth_consensus::StateView, digest: &Digest) -> Result<Links, ConsensusError> {
    let Some(projects) = v.blob_projects(digest, PROJECT_LINKS_MAX)? else {
        return Ok(Links::Unknown);
    };
    let mut projects = projects.into_iter();
    let (Some(project), rest) = (projects.next(), projects.next()) else {
        return Ok(Links::None);
    };
    if rest.is_some() {
        return Ok(Links::Default);
    }
    Ok(match v.project_profile(&project)? {
        Some(p) => Links::Project(p),
        None => Links::Default,
    })
}

/// Restripes one blob to `wanted`. Returns whether its new layout is in force.
async fn restripe(
    app: &AppState,
    cfg: RestripeConfig,
    map: &ClusterMap,
    record: &BlobRecord,
    layout: &StripedLayout,
    wanted: EcProfile,
    pacer: &mut Pacer,
) -> bool {
    let digest = &record.digest;
    let started = Instant::now();
    match copy_and_swap(app, cfg, map, record, layout, wanted, pacer).await {
        Ok(true) => {
            let state = restripes(app);
            state.blobs.fetch_add(1, Ordering::Relaxed);
            state.bytes.fetch_add(record.size, Ordering::Relaxed);
            tracing::info!(%digest, from = %layout.profile, to = %wanted, bytes = record.size,
                ms = started.elapsed().as_millis() as u64, "blob restriped");
            true
        }
        Ok(false) => false,
        // Not a fault: a project's profile wider than the healthy cluster can place
        // (disks full, or fewer nodes than it needs) waits for room.
        Err(Failure::Place(e)) => {
            tracing::debug!(%digest, to = %wanted, error = %e, "restripe: the wanted profile cannot be placed now");
            false
        }
        Err(e) => {
            restripes(app).failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%digest, from = %layout.profile, to = %wanted,
                error = %error_chain(&e), "restripe failed; retried next round");
            false
        }
    }
}

/// Copies the blob into files of a new upload placed for `wanted`, then proposes the
/// swap. `Ok(false)`: the swap was refused (the blob changed meanwhile) and the new
/// files are removed.
async fn copy_and_swap(
    app: &AppState,
    cfg: RestripeConfig,
    map: &ClusterMap,
    record: &BlobRecord,
    layout: &StripedLayout,
    wanted: EcProfile,
    pacer: &mut Pacer,
) -> Result<bool, Failure> {
    let digest = &record.digest;
    let upload = UploadId::new(app.node, rand::random::<u128>());
    let placements = place_across(upload.to_string().as_bytes(), map, wanted.width())?;
    let _writing = Writing::new(restripes(app), upload);
    let mut writer = app.store.begin_at(upload, wanted, &placements)?;
    let mut hasher = Hasher::new(digest.algorithm());
    let copied: Result<(), Failure> = async {
        let mut chunks = Box::pin(app.store.read(layout, digest, record.size, 0..record.size));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            pacer.take(chunk.len() as u64).await;
            hasher.update(&chunk);
            writer.write(chunk).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        abort(writer, digest).await;
        return Err(e);
    }
    let found = hasher.finish();
    if found != *digest {
        abort(writer, digest).await;
        return Err(Failure::DigestMismatch { found });
    }
    let written = writer.commit(digest).await?;
    if !written.missing.is_empty() {
        delete_files(app, digest, &written.layout).await;
        return Err(Failure::ShardsLost(written.missing));
    }
    let swapped = app
        .meta
        .propose(CommandV1::RestripeBlob {
            digest: digest.clone(),
            from_upload: layout.upload,
            layout: written.layout.clone(),
        })
        .await;
    match swapped {
        Ok(Outcome::BlobRestriped { replaced }) => {
            retire(app, cfg, digest, replaced).await;
            Ok(true)
        }
        Ok(Outcome::Rejected(Rejection::LayoutChanged)) => {
            tracing::info!(%digest, "restripe refused: the blob was deleted or rewritten meanwhile");
            delete_files(app, digest, &written.layout).await;
            Ok(false)
        }
        Ok(other) => Err(Failure::Unexpected(Box::new(other))),
        // Whether it applied is unknown: the new files stay (in force, or orphans the
        // sweep removes), and so do the old ones (orphans, or still in force).
        Err(e) => Err(e.into()),
    }
}

/// Marks an upload as being written by a restripe while it lives.
struct Writing<'a>(&'a Restripes);

impl<'a> Writing<'a> {
    fn new(state: &'a Restripes, upload: UploadId) -> Writing<'a> {
        *state.writing.lock().expect("restripe lock poisoned") = Some(upload);
        Writing(state)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        *self.0.writing.lock().expect("restripe lock poisoned") = None;
    }
}

/// An error with its sources, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}

async fn abort(writer: berth_blobstore::StripeWriter, digest: &Digest) {
    if let Err(e) = writer.abort().await {
        tracing::debug!(%digest, error = %e, "restripe: staging files not removed; the staging sweep will");
    }
}

/// Schedules the deletion of a replaced layout's files.
async fn retire(app: &AppState, cfg: RestripeConfig, digest: &Digest, layout: StripedLayout) {
    if cfg.old_files_delay.is_zero() {
        delete_files(app, digest, &layout).await;
        return;
    }
    restripes(app)
        .retired
        .lock()
        .expect("restripe lock poisoned")
        .push_back(Retired {
            due: Instant::now() + cfg.old_files_delay,
            digest: digest.clone(),
            layout,
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> EcProfile {
        s.parse().unwrap()
    }

    /// Blobs of an outage profile, of a grown cluster and of a project whose profile
    /// could not be placed are restriped; a blob never loses parity shards, and blobs
    /// whose owners are not known are left alone.
    #[test]
    fn only_blobs_below_their_wanted_profile_are_restriped() {
        let default = p("2+1");
        let cases = [
            ("1+1", Links::Default, Some("2+1")),
            ("1+0", Links::Default, Some("2+1")),
            ("2+1", Links::Default, None),
            ("3+2", Links::Default, None),
            ("1+2", Links::Default, None),
            ("1+1", Links::Project(p("1+1")), None),
            ("2+1", Links::Project(p("1+1")), Some("1+1")),
            ("2+1", Links::Project(p("1+2")), Some("1+2")),
            ("1+2", Links::Project(p("2+1")), None),
            ("1+1", Links::None, None),
            ("1+1", Links::Unknown, None),
        ];
        for (current, links, want) in cases {
            assert_eq!(
                restripe_to(p(current), &links, default),
                want.map(p),
                "{current} linked as {links:?}"
            );
        }
        assert_eq!(
            restripe_to(p("2+1"), &Links::Default, p("3+2")),
            Some(p("3+2"))
        );
        assert_eq!(
            restripe_to(p("3+2"), &Links::Default, p("4+2")),
            Some(p("4+2"))
        );
        // Six nodes became five: six shards of 4+2 would double up on one node.
        assert_eq!(
            restripe_to(p("4+2"), &Links::Default, p("3+2")),
            Some(p("3+2"))
        );
    }
}
