//! The upload use case: sessions owned by this node, bytes hashed as they arrive and
//! handed to the blobstore's stripe writer (or kept inline when small), the digest
//! checked before anything is committed, and one Raft command that commits the blob
//! record and the repository link. The client hears "created" only after that commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_blobstore::{BlobStore, StripeWriter};
use berth_consensus::tenancy::ProjectName;
use berth_consensus::{CommandV1, Metadata, Outcome, Rejection};
use berth_types::limits::{INLINE_BLOB_BYTES_MAX, UPLOAD_SESSIONS_MAX};
use berth_types::{BlobLayout, Digest, DigestAlgorithm, EcProfile, NodeId, RepoName, UploadId};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::Digest as _;

use crate::oci::error::{Code, OciError, OciResult};
use crate::placement::Placer;

/// An incremental hash of the algorithm the upload will most likely be named with.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Hasher {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Hasher::Sha256(_) => DigestAlgorithm::Sha256,
            Hasher::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_bytes(DigestAlgorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_bytes(DigestAlgorithm::Sha512, &h.finalize()),
        }
    }
}

/// Where the bytes of an open upload are: in memory while small, then in a writer.
enum Staged {
    Inline(Vec<u8>),
    Striped(StripeWriter),
}

struct Session {
    id: UploadId,
    repo: RepoName,
    len: u64,
    hasher: Hasher,
    staged: Staged,
    last_active: Instant,
}

type SessionSlot = Arc<tokio::sync::Mutex<Option<Session>>>;

/// What a successful upload committed.
#[derive(Debug, Clone)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// Bytes read from the request that committed it (the final body).
    pub received: u64,
}

/// The state of a session after a chunk.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// Bytes the upload holds now.
    pub len: u64,
    /// Bytes this request's body carried.
    pub received: u64,
}

/// The upload sessions this node owns.
pub struct Uploads {
    node: NodeId,
    meta: Metadata,
    store: BlobStore,
    /// Where new uploads' shards go.
    pub placer: Placer,
    sessions: Mutex<HashMap<UploadId, SessionSlot>>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unknown() -> OciError {
    OciError::new(Code::BlobUploadUnknown, "upload unknown")
}

impl Uploads {
    pub fn new(node: NodeId, meta: Metadata, store: BlobStore, placer: Placer) -> Uploads {
        Uploads {
            node,
            meta,
            store,
            placer,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Upload ids of sessions this node holds open.
    pub fn live(&self) -> Vec<UploadId> {
        self.sessions.lock().unwrap().keys().copied().collect()
    }

    fn new_session(&self, repo: &RepoName, algorithm: DigestAlgorithm) -> OciResult<Session> {
        if self.sessions.lock().unwrap().len() >= UPLOAD_SESSIONS_MAX {
            return Err(OciError::new(
                Code::TooManyRequests,
                "too many open uploads on this node, retry later",
            ));
        }
        Ok(Session {
            id: UploadId::new(self.node, rand::random::<u128>()),
            repo: repo.clone(),
            len: 0,
            hasher: Hasher::new(algorithm),
            staged: Staged::Inline(Vec::new()),
            last_active: Instant::now(),
        })
    }

    fn insert(&self, session: Session) -> SessionSlot {
        let id = session.id;
        let slot = Arc::new(tokio::sync::Mutex::new(Some(session)));
        self.sessions.lock().unwrap().insert(id, slot.clone());
        slot
    }

    fn remove(&self, id: &UploadId) {
        self.sessions.lock().unwrap().remove(id);
    }

    fn slot(&self, id: &UploadId) -> OciResult<SessionSlot> {
        self.sessions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(unknown)
    }

    /// Opens a session (recorded through Raft so it survives a leader change).
    pub async fn create(&self, repo: &RepoName) -> OciResult<UploadId> {
        let session = self.new_session(repo, DigestAlgorithm::Sha256)?;
        let id = session.id;
        self.meta
            .propose(CommandV1::CreateUpload {
                id,
                repo: repo.clone(),
                at_ms: now_ms(),
            })
            .await?;
        self.insert(session);
        Ok(id)
    }

    /// Appends a body to an open session. `start` is the chunk's first offset from
    /// `Content-Range`, when given; it must equal the bytes received so far.
    pub async fn append<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: S,
    ) -> OciResult<Appended>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let slot = self.slot(id)?;
        let mut guard = slot.lock().await;
        let session = guard.as_mut().ok_or_else(unknown)?;
        if session.repo != *repo {
            return Err(unknown());
        }
        if let Some(start) = start
            && start != session.len
        {
            return Err(range_error(repo, id, session.len));
        }
        let before = session.len;
        let result = self.consume(session, body).await.map(|len| Appended {
            len,
            received: len - before,
        });
        if let Err(e) = &result
            && e.code != Code::BlobUploadInvalid
        {
            // A storage failure leaves the staged bytes unknown: drop the session.
            let dead = guard.take();
            drop(guard);
            self.discard(id, dead).await;
        }
        result
    }

    /// Reads `body` into the session. A client that stops sending mid-body keeps the
    /// bytes received so far, as a chunked upload expects.
    async fn consume<S, E>(&self, session: &mut Session, mut body: S) -> OciResult<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        session.last_active = Instant::now();
        while let Some(frame) = body.next().await {
            let frame = frame.map_err(|e| {
                OciError::new(
                    Code::BlobUploadInvalid,
                    format!("reading the request body: {e}"),
                )
            })?;
            session.hasher.update(&frame);
            session.len += frame.len() as u64;
            match &mut session.staged {
                Staged::Inline(buf) if buf.len() + frame.len() <= INLINE_BLOB_BYTES_MAX => {
                    buf.extend_from_slice(&frame);
                }
                Staged::Inline(buf) => {
                    let project = self.project_profile(&session.repo).await;
                    let mut writer = self.placer.begin(session.id, project).await?;
                    writer.write(Bytes::from(std::mem::take(buf))).await?;
                    writer.write(frame).await?;
                    session.staged = Staged::Striped(writer);
                }
                Staged::Striped(writer) => writer.write(frame).await?,
            }
        }
        session.last_active = Instant::now();
        Ok(session.len)
    }

    /// The erasure-coding profile `repo`'s project asks for, if any. Unreadable
    /// metadata means the default: the upload goes on and the blob stays readable.
    async fn project_profile(&self, repo: &RepoName) -> Option<EcProfile> {
        let project = ProjectName::of(repo);
        match self
            .meta
            .read_local(move |v| v.project_profile(&project))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%repo, error = %e,
                    "cannot read the project's profile; the blob gets the default");
                None
            }
        }
    }

    /// Bytes received so far.
    pub async fn status(&self, repo: &RepoName, id: &UploadId) -> OciResult<u64> {
        let slot = self.slot(id)?;
        let guard = slot.lock().await;
        match guard.as_ref() {
            Some(s) if s.repo == *repo => Ok(s.len),
            _ => Err(unknown()),
        }
    }

    /// Cancels a session and removes its data.
    pub async fn cancel(&self, repo: &RepoName, id: &UploadId) -> OciResult<()> {
        let slot = self.slot(id)?;
        let mut guard = slot.lock().await;
        match guard.as_ref() {
            Some(s) if s.repo == *repo => {}
            _ => return Err(unknown()),
        }
        let session = guard.take();
        drop(guard);
        self.discard(id, session).await;
        Ok(())
    }

    async fn discard(&self, id: &UploadId, session: Option<Session>) {
        self.remove(id);
        if let Some(Session {
            staged: Staged::Striped(w),
            ..
        }) = session
            && let Err(e) = w.abort().await
        {
            tracing::warn!(upload = %id, error = %e, "removing staged upload data");
        }
        if let Err(e) = self.meta.propose(CommandV1::CancelUpload { id: *id }).await {
            tracing::warn!(upload = %id, error = %e, "cancelling upload record");
        }
    }

    /// Appends the final body, checks the digest and commits the blob.
    pub async fn finish<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        body: S,
    ) -> OciResult<Committed>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let appended = self.append(repo, id, None, body).await?;
        let slot = self.slot(id)?;
        let mut guard = slot.lock().await;
        let session = guard.take().ok_or_else(unknown)?;
        drop(guard);
        // The id stays in the map (with an empty slot) until the commit is done, so the
        // staging sweep sees the upload as live while its files are being published.
        let committed = self
            .commit(session, repo, digest, true)
            .await
            .map(|c| Committed {
                received: appended.received,
                ..c
            });
        self.remove(id);
        committed
    }

    /// A single-request upload (`POST ?digest=`): no session record in Raft, since it
    /// lives exactly as long as the request.
    pub async fn monolithic<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: S,
    ) -> OciResult<Committed>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let session = self.new_session(repo, digest.algorithm())?;
        let id = session.id;
        let slot = self.insert(session);
        let mut guard = slot.lock().await;
        let mut session = guard.take().ok_or_else(unknown)?;
        drop(guard);
        let consumed = self.consume(&mut session, body).await;
        let committed = match consumed {
            Ok(_) => self.commit(session, repo, digest, false).await,
            Err(e) => {
                if let Staged::Striped(w) = session.staged {
                    let _ = w.abort().await;
                }
                Err(e)
            }
        };
        self.remove(&id);
        committed
    }

    async fn commit(
        &self,
        session: Session,
        repo: &RepoName,
        digest: &Digest,
        recorded: bool,
    ) -> OciResult<Committed> {
        let Session {
            id,
            len,
            hasher,
            staged,
            ..
        } = session;
        let mismatch = || {
            OciError::new(
                Code::DigestInvalid,
                format!("uploaded content does not match digest {digest}"),
            )
        };
        let same_algorithm = hasher.algorithm() == digest.algorithm();
        let computed = same_algorithm.then(|| hasher.finish());
        let mut missing = Vec::new();
        let layout = match staged {
            Staged::Inline(buf) => {
                let ok = match &computed {
                    Some(c) => c == digest,
                    None => crate::manifest::digest_of(digest.algorithm(), &buf) == *digest,
                };
                if !ok {
                    self.forget(id, recorded).await;
                    return Err(mismatch());
                }
                BlobLayout::Inline(buf)
            }
            Staged::Striped(writer) => {
                if computed.as_ref().is_some_and(|c| c != digest) {
                    let _ = writer.abort().await;
                    self.forget(id, recorded).await;
                    return Err(mismatch());
                }
                let written = writer.commit(digest).await?;
                let striped = written.layout;
                if computed.is_none() && !self.rehash_matches(&striped, digest, len).await? {
                    self.delete_files(&striped, digest).await;
                    self.forget(id, recorded).await;
                    return Err(mismatch());
                }
                missing = written.missing;
                BlobLayout::Striped(striped)
            }
        };
        let ours = layout.clone();
        let outcome = self
            .meta
            .propose(CommandV1::CommitBlob {
                repo: repo.clone(),
                digest: digest.clone(),
                size: len,
                layout,
                upload: recorded.then_some(id),
                at_ms: now_ms(),
            })
            .await;
        match outcome {
            Ok(Outcome::BlobCommitted { existing, .. }) => {
                if existing && let BlobLayout::Striped(s) = &ours {
                    // The content was already stored by an earlier upload; ours is redundant.
                    self.delete_files(s, digest).await;
                } else if !missing.is_empty() {
                    tracing::warn!(%digest, ?missing,
                        "blob committed with shards lost during the upload; they are rebuilt by repair");
                    self.placer.repairs.queue(digest, &missing);
                }
                Ok(Committed {
                    digest: digest.clone(),
                    size: len,
                    received: len,
                })
            }
            Ok(Outcome::Rejected(Rejection::UploadUnknown(_))) => {
                // The session expired while the bytes streamed in; its files may be
                // swept already, so the blob was not recorded. The client starts over.
                if let BlobLayout::Striped(s) = &ours {
                    self.delete_files(s, digest).await;
                }
                Err(unknown())
            }
            Ok(other) => Err(OciError::internal(&format!("unexpected outcome {other:?}"))),
            Err(e) => {
                // Not committed: the shard files become orphans the sweeper removes.
                Err(e.into())
            }
        }
    }

    /// Removes the shard files of a blob that was not recorded, or not as ours. A
    /// failure (a peer down) leaves them to the orphan sweep.
    async fn delete_files(&self, layout: &berth_types::StripedLayout, digest: &Digest) {
        if let Err(e) = self.store.delete(layout, digest).await {
            tracing::warn!(%digest, error = %e,
                "could not remove the shard files of an unrecorded upload; the orphan sweep will");
        }
    }

    async fn forget(&self, id: UploadId, recorded: bool) {
        if recorded && let Err(e) = self.meta.propose(CommandV1::CancelUpload { id }).await {
            tracing::warn!(upload = %id, error = %e, "cancelling upload record");
        }
    }

    /// Hashes committed-but-unpublished shard files with the digest's algorithm, for
    /// uploads that were hashed with another algorithm while they streamed in.
    async fn rehash_matches(
        &self,
        layout: &berth_types::StripedLayout,
        digest: &Digest,
        len: u64,
    ) -> OciResult<bool> {
        let mut hasher = Hasher::new(digest.algorithm());
        let mut stream = Box::pin(self.store.read(layout, digest, len, 0..len));
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hasher.finish() == *digest)
    }

    /// Cancels sessions idle for longer than `ttl`. Returns how many.
    pub async fn expire_idle(&self, ttl: Duration) -> usize {
        let slots: Vec<(UploadId, SessionSlot)> = self
            .sessions
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut expired = 0;
        for (id, slot) in slots {
            let Ok(mut guard) = slot.try_lock() else {
                continue; // A request is using it right now: not idle.
            };
            if guard
                .as_ref()
                .is_some_and(|s| s.last_active.elapsed() > ttl)
            {
                let session = guard.take();
                drop(guard);
                self.discard(&id, session).await;
                expired += 1;
            }
        }
        expired
    }
}

/// A chunk that does not start where the upload stands: 416 with the current range.
fn range_error(repo: &RepoName, id: &UploadId, len: u64) -> OciError {
    use axum::http::{HeaderValue, header};
    let location = format!("/v2/{repo}/blobs/uploads/{id}");
    OciError::new(
        Code::RangeInvalid,
        format!("chunk does not start at the upload's current offset {len}"),
    )
    .with_header(
        header::RANGE,
        HeaderValue::from_str(&crate::oci::ranges::upload_range(len)).expect("ascii"),
    )
    .with_header(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii"),
    )
}
