//! Protobuf conversions of the Raft transport: openraft messages to and from the
//! versioned postcard payloads of `proto/raft.proto`, the snapshot stream as a lazy
//! sequence of messages read from the snapshot file, and its checked reassembly into
//! a file on the receiving node.

use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RpcRefusal;
use super::limits::SNAPSHOT_BYTES_MAX;
use super::pb;
use std::path::Path;

use crate::codec;
use crate::snapshot_file::StagedFile;
use crate::state_machine::SnapshotData;
use crate::type_config::{SnapshotMeta, TypeConfig, Vote};

/// A snapshot as openraft hands it to the network and takes it back.
pub(crate) type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Wraps an openraft request addressed to node `target`.
pub(crate) fn request<T: Serialize>(target: u64, msg: &T) -> pb::RaftRequest {
    pb::RaftRequest {
        target,
        payload: codec::encode(msg),
    }
}

/// Wraps an openraft response.
pub(crate) fn reply<T: Serialize>(msg: &T) -> pb::RaftReply {
    pb::RaftReply {
        payload: codec::encode(msg),
    }
}

/// Unwraps a payload written by [`request`] or [`reply`].
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, RpcRefusal> {
    codec::decode(what, payload).map_err(|source| RpcRefusal::Payload { what, source })
}

/// The header of a snapshot stream: its length and SHA-256 were recorded when the
/// snapshot file was written.
pub(crate) fn snapshot_header(target: u64, vote: &Vote, snapshot: &Snapshot) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        part: Some(pb::snapshot_chunk::Part::Header(pb::SnapshotHeader {
            target,
            payload: codec::encode(&(vote, &snapshot.meta)),
            data_bytes: snapshot.snapshot.len(),
            data_sha256: snapshot.snapshot.sha256().to_vec(),
        })),
    }
}

/// The snapshot stream: `header`, then the snapshot file in chunks of `chunk_bytes`.
/// A chunk is read from disk only when the transport polls for the next message, so at
/// most one chunk exists beyond what the transport has already encoded. A read error
/// ends the stream early, which the receiver refuses as a short snapshot.
pub(crate) fn snapshot_messages(
    header: pb::SnapshotChunk,
    data: SnapshotData,
    chunk_bytes: usize,
) -> impl Stream<Item = pb::SnapshotChunk> + Send + 'static {
    assert!(chunk_bytes > 0, "snapshot chunks are at least one byte");
    let chunks = stream::unfold((data, 0u64), move |(data, offset)| async move {
        if offset >= data.len() {
            return None;
        }
        let file = data.clone();
        let read = tokio::task::spawn_blocking(move || file.read_chunk(offset, chunk_bytes)).await;
        let chunk = match read {
            Ok(Ok(chunk)) if !chunk.is_empty() => chunk,
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, file = data.name(), offset, "reading the snapshot file failed; the stream ends short");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the snapshot read task failed; the stream ends short");
                return None;
            }
        };
        let end = offset + chunk.len() as u64;
        let msg = pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Data(chunk)),
        };
        Some((msg, (data, end)))
    });
    stream::once(async move { header }).chain(chunks)
}

/// A snapshot being received into a staged file: the header's promises, checked as
/// the bytes arrive. Dropped unfinished, the staged file goes.
pub(crate) struct SnapshotAssembly {
    vote: Vote,
    meta: SnapshotMeta,
    declared_bytes: u64,
    declared_sha256: Vec<u8>,
    staged: StagedFile,
}

impl SnapshotAssembly {
    /// Starts from the first message of a stream received by node `this`, staging the
    /// bytes in `dir`.
    pub(crate) fn start(
        this: u64,
        first: pb::SnapshotChunk,
        dir: &Path,
    ) -> Result<SnapshotAssembly, RpcRefusal> {
        let Some(pb::snapshot_chunk::Part::Header(header)) = first.part else {
            return Err(RpcRefusal::SnapshotWithoutHeader);
        };
        if header.target != this {
            return Err(RpcRefusal::WrongNode {
                addressed: header.target,
                this,
            });
        }
        if header.data_bytes > SNAPSHOT_BYTES_MAX {
            return Err(RpcRefusal::SnapshotTooLarge {
                bytes: header.data_bytes,
                max: SNAPSHOT_BYTES_MAX,
            });
        }
        let (vote, meta): (Vote, SnapshotMeta) = decode("snapshot header", &header.payload)?;
        Ok(SnapshotAssembly {
            vote,
            meta,
            declared_bytes: header.data_bytes,
            declared_sha256: header.data_sha256,
            staged: StagedFile::create(dir).map_err(RpcRefusal::SnapshotFile)?,
        })
    }

    /// Appends the next message, which must be data within the declared length. The
    /// write goes to the page cache (chunks are at most 4 MiB); the fsync happens in
    /// [`SnapshotAssembly::finish`], off the async runtime.
    pub(crate) fn push(&mut self, msg: pb::SnapshotChunk) -> Result<(), RpcRefusal> {
        let Some(pb::snapshot_chunk::Part::Data(chunk)) = msg.part else {
            return Err(RpcRefusal::SnapshotHeaderRepeated);
        };
        let received = self.staged.len() + chunk.len() as u64;
        if received > self.declared_bytes {
            return Err(RpcRefusal::SnapshotLength {
                declared: self.declared_bytes,
                received,
            });
        }
        self.staged
            .write_all(&chunk)
            .map_err(RpcRefusal::SnapshotFile)
    }

    /// Checks length and checksum, makes the file durable, and yields the leader's
    /// vote and the snapshot.
    pub(crate) async fn finish(self) -> Result<(Vote, Snapshot), RpcRefusal> {
        let received = self.staged.len();
        if received != self.declared_bytes {
            return Err(RpcRefusal::SnapshotLength {
                declared: self.declared_bytes,
                received,
            });
        }
        if self.staged.sha256().as_slice() != self.declared_sha256.as_slice() {
            return Err(RpcRefusal::SnapshotChecksum);
        }
        let staged = self.staged;
        let file = tokio::task::spawn_blocking(move || staged.publish())
            .await
            .map_err(|e| RpcRefusal::SnapshotFile(std::io::Error::other(e)))?
            .map_err(RpcRefusal::SnapshotFile)?;
        Ok((
            self.vote,
            Snapshot {
                meta: self.meta,
                snapshot: file,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    //! Proves that every openraft message survives the wire format, that the snapshot
    //! stream reassembles to the same bytes for any chunk size, and that a receiver
    //! refuses misaddressed, truncated, overlong, corrupted or malformed streams.

    use std::collections::{BTreeMap, BTreeSet};

    use openraft::entry::RaftEntry;
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::vote::RaftLeaderIdExt;
    use openraft::{Membership, RaftTypeConfig};

    use super::*;
    use crate::model::{Command, VersionedCommand};
    use crate::type_config::{Entry, LogId, Peer, StoredMembership};

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, node),
            index,
        )
    }

    fn vote() -> Vote {
        Vote::new_committed(3, 1)
    }

    fn membership() -> Membership<u64, Peer> {
        let peer = |a: &str| Peer { addr: a.into() };
        Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, peer("a:1")),
                (2, peer("b:2")),
                (3, peer("c:3")),
                (4, peer("d:4")),
            ]),
        )
        .unwrap()
    }

    fn snapshot(dir: &Path, bytes: usize) -> Snapshot {
        let mut staged = StagedFile::create(dir).unwrap();
        let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        staged.write_all(&data).unwrap();
        Snapshot {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 1, 40)),
                last_membership: StoredMembership::new(Some(log_id(2, 1, 7)), membership()),
            },
            snapshot: staged.publish().unwrap(),
        }
    }

    fn content(snap: &Snapshot) -> Vec<u8> {
        snap.snapshot
            .read_chunk(0, snap.snapshot.len() as usize)
            .unwrap()
    }

    fn round_trip<T>(what: &'static str, value: &T) -> T
    where
        T: Serialize + DeserializeOwned,
    {
        let req = request(9, value);
        assert_eq!(req.target, 9);
        assert_eq!(req.payload[0], codec::FORMAT_V1);
        let back: T = decode(what, &req.payload).unwrap();
        let rep: T = decode(what, &reply(value).payload).unwrap();
        assert_eq!(codec::encode(&back), codec::encode(&rep));
        back
    }

    #[test]
    fn openraft_messages_survive_the_wire() {
        let entries: Vec<Entry> = vec![
            Entry::new_blank(log_id(3, 1, 41)),
            Entry::new_normal(
                log_id(3, 1, 42),
                VersionedCommand::from(Command::ExpireUploads { before_ms: 5 }),
            ),
            Entry::new_membership(log_id(3, 1, 43), membership()),
        ];
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: vote(),
            prev_log_id: Some(log_id(3, 1, 40)),
            entries,
            leader_commit: Some(log_id(3, 1, 40)),
        };
        let back = round_trip("append-entries request", &append);
        // openraft's request has no `PartialEq`: compare its full debug form and bytes.
        assert_eq!(format!("{back:?}"), format!("{append:?}"));
        assert_eq!(codec::encode(&back), codec::encode(&append));
        assert_eq!(back.entries.len(), 3);

        for resp in [
            AppendEntriesResponse::<TypeConfig>::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 42))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(4, 2)),
        ] {
            assert_eq!(round_trip("append-entries reply", &resp), resp);
        }

        let vote_req = VoteRequest::<TypeConfig>::new(Vote::new(4, 2), Some(log_id(3, 1, 43)));
        assert_eq!(round_trip("vote request", &vote_req), vote_req);
        let vote_resp =
            VoteResponse::<TypeConfig>::new(Vote::new(4, 2), Some(log_id(3, 1, 43)), true);
        assert_eq!(round_trip("vote reply", &vote_resp), vote_resp);
        let snap_resp = SnapshotResponse::<TypeConfig>::new(vote());
        assert_eq!(round_trip("snapshot reply", &snap_resp), snap_resp);
    }

    #[test]
    fn unknown_payload_versions_are_refused() {
        let mut req = request(1, &vote());
        req.payload[0] = codec::FORMAT_V1 + 1;
        assert!(matches!(
            decode::<Vote>("vote", &req.payload),
            Err(RpcRefusal::Payload { .. })
        ));
        assert!(matches!(
            decode::<Vote>("vote", &[]),
            Err(RpcRefusal::Payload { .. })
        ));
    }

    async fn collect(snap: &Snapshot, chunk: usize, target: u64) -> Vec<pb::SnapshotChunk> {
        let header = snapshot_header(target, &vote(), snap);
        snapshot_messages(header, snap.snapshot.clone(), chunk)
            .collect()
            .await
    }

    async fn assemble(
        this: u64,
        msgs: Vec<pb::SnapshotChunk>,
    ) -> Result<(Vote, Snapshot), RpcRefusal> {
        let dir = tempfile::tempdir().unwrap();
        let mut msgs = msgs.into_iter();
        let mut asm = SnapshotAssembly::start(this, msgs.next().unwrap(), dir.path())?;
        for m in msgs {
            asm.push(m)?;
        }
        let done = asm.finish().await;
        // A refused stream leaves no file behind; a received one is one snapshot file.
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, usize::from(done.is_ok()));
        done
    }

    #[tokio::test]
    async fn snapshots_reassemble_for_any_chunk_size() {
        let dir = tempfile::tempdir().unwrap();
        for (bytes, chunk) in [(0, 5), (1, 1), (1000, 7), (1000, 1000), (1000, 4096)] {
            let snap = snapshot(dir.path(), bytes);
            let msgs = collect(&snap, chunk, 2).await;
            assert_eq!(
                msgs.len(),
                1 + bytes.div_ceil(chunk),
                "{bytes} bytes by {chunk}"
            );
            let (v, back) = assemble(2, msgs).await.unwrap();
            assert_eq!(v, vote());
            assert_eq!(back.meta, snap.meta);
            assert_eq!(content(&back), content(&snap));
            assert_eq!(back.snapshot.sha256(), snap.snapshot.sha256());
        }
    }

    #[tokio::test]
    async fn damaged_snapshot_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(dir.path(), 100);
        let good = collect(&snap, 30, 2).await;

        assert!(matches!(
            assemble(3, good.clone()).await,
            Err(RpcRefusal::WrongNode {
                addressed: 2,
                this: 3
            })
        ));
        assert!(matches!(
            assemble(2, good[1..].to_vec()).await,
            Err(RpcRefusal::SnapshotWithoutHeader)
        ));

        let mut truncated = good.clone();
        truncated.pop();
        assert!(matches!(
            assemble(2, truncated).await,
            Err(RpcRefusal::SnapshotLength {
                declared: 100,
                received: 90
            })
        ));

        let mut overlong = good.clone();
        overlong.push(good[1].clone());
        assert!(matches!(
            assemble(2, overlong).await,
            Err(RpcRefusal::SnapshotLength { declared: 100, .. })
        ));

        let mut corrupt = good.clone();
        if let Some(pb::snapshot_chunk::Part::Data(d)) = &mut corrupt[2].part {
            d[0] ^= 1;
        }
        assert!(matches!(
            assemble(2, corrupt).await,
            Err(RpcRefusal::SnapshotChecksum)
        ));

        let mut second_header = good.clone();
        second_header.insert(2, good[0].clone());
        assert!(matches!(
            assemble(2, second_header).await,
            Err(RpcRefusal::SnapshotHeaderRepeated)
        ));

        let mut huge = good.clone();
        if let Some(pb::snapshot_chunk::Part::Header(h)) = &mut huge[0].part {
            h.data_bytes = SNAPSHOT_BYTES_MAX + 1;
        }
        assert!(matches!(
            assemble(2, huge).await,
            Err(RpcRefusal::SnapshotTooLarge { .. })
        ));
    }
}
