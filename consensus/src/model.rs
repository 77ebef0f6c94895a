//! The registry metadata model: the records the state machine stores, the versioned
//! commands that change them, and the outcomes a command returns.
//!
//! Commands travel through the Raft log as [`VersionedCommand`]; a new format adds a
//! variant and an upgrade to the current [`Command`], so logs written by older nodes
//! stay readable.

use std::collections::BTreeMap;
use std::fmt;

use berth_types::{
    BlobLayout, Digest, NodeId, RepoName, ShardPlacement, StripedLayout, Tag, UploadId,
};
use serde::{Deserialize, Serialize};

use crate::tenancy::{TenancyCommand, TenancyOutcome};

/// A stored manifest. `bytes` are kept byte-for-byte so the digest a client computes
/// over a pulled manifest matches the one it pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    /// Up to `limits::MANIFEST_BYTES_MAX`.
    pub bytes: Vec<u8>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub pushed_at_ms: u64,
}

/// A committed blob and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub digest: Digest,
    pub size: u64,
    pub layout: BlobLayout,
    pub created_at_ms: u64,
}

/// An open upload session. Recorded through Raft so it survives a leader change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: UploadId,
    pub repo: RepoName,
    pub started_at_ms: u64,
}

/// A tag and the manifest it points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub pushed_at_ms: u64,
}

/// A manifest of a repository whose `subject` is some digest, as listed by the
/// referrers API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrerRecord {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

impl ReferrerRecord {
    /// The referrer entry a manifest contributes to its subject's index.
    pub fn of(record: &ManifestRecord) -> ReferrerRecord {
        ReferrerRecord {
            digest: record.digest.clone(),
            media_type: record.media_type.clone(),
            artifact_type: record.artifact_type.clone(),
            size: record.bytes.len() as u64,
            annotations: record.annotations.clone(),
        }
    }
}

/// Format 1 of the registry commands. Every field an apply needs is in the command,
/// including time (`at_ms`, stamped by the proposer), so every node computes the same
/// state from the same log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandV1 {
    /// Records an upload session.
    CreateUpload {
        id: UploadId,
        repo: RepoName,
        at_ms: u64,
    },
    /// Removes an upload session.
    CancelUpload {
        id: UploadId,
    },
    /// Records a verified blob (unless one with that digest exists) and links it into
    /// `repo`, closing `upload` if given.
    CommitBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
        layout: BlobLayout,
        upload: Option<UploadId>,
        at_ms: u64,
    },
    /// Links into `repo` a blob that `from` links.
    MountBlob {
        repo: RepoName,
        from: RepoName,
        digest: Digest,
    },
    /// Stores a manifest, optionally tags it, and indexes it under its subject. `blobs`
    /// and `manifests` are what the manifest references; each must already be in `repo`.
    PutManifest {
        repo: RepoName,
        record: ManifestRecord,
        tag: Option<Tag>,
        blobs: Vec<Digest>,
        manifests: Vec<Digest>,
    },
    /// Removes a manifest, every tag pointing to it and its referrer entry.
    DeleteManifest {
        repo: RepoName,
        digest: Digest,
    },
    DeleteTag {
        repo: RepoName,
        tag: Tag,
    },
    /// Removes a repository's link to a blob; the blob record stays for GC.
    UnlinkBlob {
        repo: RepoName,
        digest: Digest,
    },
    /// Removes every upload session started before `before_ms`.
    ExpireUploads {
        before_ms: u64,
    },
    /// Removes a blob record that no repository links (GC sweep).
    DeleteBlobRecord {
        digest: Digest,
    },
    /// Names the cluster, once: the first id committed stays, later ones are ignored.
    SetClusterId {
        id: u128,
    },
    /// Projects, users, robots, role bindings, signing keys and the audit log.
    Tenancy(TenancyCommand),
    /// Points shard `index` of a blob's striped layout at `to`, where repair, drain or
    /// rebalance has just written it, if the layout still holds `from` there (and
    /// still belongs to `upload`); otherwise refused with `LayoutChanged`.
    MoveShard {
        digest: Digest,
        upload: UploadId,
        index: u8,
        from: ShardPlacement,
        to: ShardPlacement,
    },
    /// Marks `node` draining (placement gives it no new shards and repair moves every
    /// shard it holds onto other nodes), or no longer draining.
    SetDraining {
        node: NodeId,
        draining: bool,
    },
    /// Replaces a blob's striped layout with `layout`: the same bytes written anew by
    /// another upload (`layout.upload`), with the profile the cluster wants now
    /// (restriping). Applied only if the blob's current layout is striped and still
    /// belongs to `from_upload`, and `layout` is consistent and names another upload;
    /// otherwise refused with `LayoutChanged` (the blob was deleted, written anew, or
    /// restriped meanwhile). The outcome carries the layout replaced, whose files the
    /// proposer removes.
    RestripeBlob {
        digest: Digest,
        from_upload: UploadId,
        layout: StripedLayout,
    },
}

/// The command format current code proposes.
pub type Command = CommandV1;

/// Names one proposal across every retry of it, so a command whose reply was lost
/// (a forwarded call that timed out, a leader that stepped down mid-commit) can be
/// proposed again and still apply once: the state machine remembers the outcome of
/// each request id for [`REQUEST_RETENTION_MS`] and answers a repeat with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl RequestId {
    /// A fresh random id (128 bits: collisions are not a concern).
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How long the state machine remembers a request id's outcome, measured in the
/// proposers' clocks (`at_ms`). Retries of one proposal span seconds; the margin
/// covers clock skew between nodes.
pub const REQUEST_RETENTION_MS: u64 = 10 * 60 * 1000;

/// A command as written to the Raft log: the format version leads, so a node can read
/// every format it ever wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionedCommand {
    V1(CommandV1),
    /// A format-1 command with its request id and the proposer's clock at proposal
    /// (which also drives forgetting old request ids, deterministically).
    Tracked {
        request: RequestId,
        at_ms: u64,
        command: CommandV1,
    },
}

impl VersionedCommand {
    /// Upgrades to the current command format.
    pub fn into_current(self) -> Command {
        self.into_parts().1
    }

    /// The request id with its proposal time, if any, and the current command.
    pub fn into_parts(self) -> (Option<(RequestId, u64)>, Command) {
        match self {
            VersionedCommand::V1(c) => (None, c),
            VersionedCommand::Tracked {
                request,
                at_ms,
                command,
            } => (Some((request, at_ms)), command),
        }
    }

    /// The command with a fresh request id, proposed at `at_ms`.
    pub fn tracked(command: Command, at_ms: u64) -> VersionedCommand {
        VersionedCommand::Tracked {
            request: RequestId::random(),
            at_ms,
            command,
        }
    }
}

impl From<Command> for VersionedCommand {
    fn from(c: Command) -> VersionedCommand {
        VersionedCommand::V1(c)
    }
}

/// A short summary for logs; never prints manifest bytes or layouts.
impl fmt::Display for VersionedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self {
            VersionedCommand::V1(c) => {
                write!(f, "v1 ")?;
                c
            }
            VersionedCommand::Tracked {
                request, command, ..
            } => {
                write!(f, "v1 request {request} ")?;
                command
            }
        };
        match c {
            CommandV1::CreateUpload { id, repo, .. } => write!(f, "create-upload {repo} {id}"),
            CommandV1::CancelUpload { id } => write!(f, "cancel-upload {id}"),
            CommandV1::CommitBlob { repo, digest, .. } => write!(f, "commit-blob {repo} {digest}"),
            CommandV1::MountBlob { repo, from, digest } => {
                write!(f, "mount-blob {repo} from {from} {digest}")
            }
            CommandV1::PutManifest { repo, record, .. } => {
                write!(f, "put-manifest {repo} {}", record.digest)
            }
            CommandV1::DeleteManifest { repo, digest } => {
                write!(f, "delete-manifest {repo} {digest}")
            }
            CommandV1::DeleteTag { repo, tag } => write!(f, "delete-tag {repo} {tag}"),
            CommandV1::UnlinkBlob { repo, digest } => write!(f, "unlink-blob {repo} {digest}"),
            CommandV1::ExpireUploads { before_ms } => {
                write!(f, "expire-uploads before {before_ms}")
            }
            CommandV1::DeleteBlobRecord { digest } => write!(f, "delete-blob-record {digest}"),
            CommandV1::SetClusterId { id } => write!(f, "set-cluster-id {id:032x}"),
            CommandV1::Tenancy(t) => write!(f, "tenancy {t}"),
            CommandV1::MoveShard {
                digest,
                index,
                from,
                to,
                ..
            } => write!(
                f,
                "move-shard {digest} {index} from {}/{} to {}/{}",
                from.node, from.disk, to.node, to.disk
            ),
            CommandV1::SetDraining { node, draining } => {
                write!(f, "set-draining {node} {draining}")
            }
            CommandV1::RestripeBlob {
                digest,
                from_upload,
                layout,
            } => write!(
                f,
                "restripe-blob {digest} from {from_upload} to {} {}",
                layout.profile, layout.upload
            ),
        }
    }
}

/// Why a command was refused. Expected, so a value rather than an error; a refused
/// command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// A manifest references a blob the repository does not link.
    BlobUnknown(Digest),
    /// A manifest references a child manifest the repository does not hold.
    ManifestUnknown(Digest),
    /// A blob commit names an upload session that no longer exists (expired or
    /// cancelled), and no blob with that digest was recorded: its shard files may
    /// already be swept, so the commit must not point at them.
    UploadUnknown(UploadId),
    /// A blob record cannot be deleted while a repository links it.
    StillLinked,
    /// A shard move found the blob gone, written by another upload, or the shard no
    /// longer where the move expected it; a restripe found the blob gone or its
    /// layout belonging to another upload than the one it copied.
    LayoutChanged,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    UploadCreated,
    UploadCancelled,
    /// The blob is linked into the repository. With `existing`, a record with that
    /// digest was already there and is kept: `layout` is the kept layout, and the
    /// caller deletes its own redundant shard files.
    BlobCommitted {
        existing: bool,
        layout: BlobLayout,
    },
    /// `Some(blob)` when the blob is now linked into the target repository; `None`
    /// when the source does not link it (nothing changed).
    Mounted(Option<BlobRecord>),
    ManifestPut,
    /// The manifest was removed, with the tags that pointed to it.
    ManifestDeleted {
        untagged: Vec<Tag>,
    },
    TagDeleted,
    BlobUnlinked,
    /// The sessions removed, ordered by start time then id.
    UploadsExpired(Vec<UploadId>),
    /// The removed record; the caller deletes its shard files.
    BlobRecordDeleted(BlobRecord),
    /// The cluster's id (the one just set, or the one set before).
    ClusterId(u128),
    /// The thing to remove does not exist.
    NotFound,
    Rejected(Rejection),
    /// What a tenancy command did.
    Tenancy(TenancyOutcome),
    /// The shard now sits where the move put it.
    ShardMoved,
    /// The node's draining mark is as the command asked.
    DrainingSet,
    /// The blob's layout is the restriped one now; `replaced` is the layout it had,
    /// whose shard files no layout names any more.
    BlobRestriped {
        replaced: StripedLayout,
    },
}

impl Outcome {
    /// Whether the command changed nothing because it was refused or found nothing.
    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::NotFound | Outcome::Rejected(_))
    }
}
