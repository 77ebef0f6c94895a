//! Micro-benchmark of the state machine's apply step: one batch of commands applied to
//! the redb state machine in one transaction (`bench_support::ApplyBench`, the step
//! `StateMachineStore::apply` runs for the entries Raft hands it at once). A batch is
//! 32 pushed images, each an upload session, the commit of its blob (a striped 2+1
//! layout) and a tagged manifest that references it: 96 commands. The state grows from
//! batch to batch as on a live node.
//! `cargo bench -p berth-consensus --bench apply`; CI only compiles it.

use std::collections::BTreeMap;

use berth_consensus::bench_support::ApplyBench;
use berth_consensus::{CommandV1, ManifestRecord, Outcome, VersionedCommand};
use berth_types::{
    BlobLayout, CodecId, Digest, DigestAlgorithm, DiskId, EcProfile, NodeId, RepoName,
    ShardPlacement, StripedLayout, UploadId,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const IMAGES_PER_BATCH: u64 = 32;

fn digest(kind: u8, n: u64) -> Digest {
    let mut raw = [kind; 32];
    raw[..8].copy_from_slice(&n.to_le_bytes());
    Digest::from_bytes(DigestAlgorithm::Sha256, &raw)
}

/// The three commands of pushing image `n`: its upload session, its layer, then its
/// manifest under a tag.
fn image(repo: &RepoName, n: u64) -> [VersionedCommand; 3] {
    let blob = digest(1, n);
    let upload = UploadId::new(NodeId(1), u128::from(n));
    let layout = StripedLayout {
        codec: CodecId::ReedSolomonV1,
        profile: EcProfile::new(2, 1).expect("a valid profile"),
        shard_bytes: 1024 * 1024,
        upload,
        shards: (1..=3)
            .map(|i| ShardPlacement {
                node: NodeId(i),
                disk: DiskId(u32::try_from(i).expect("small")),
            })
            .collect(),
    };
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"layers\":[{{\"digest\":\"{blob}\",\"size\":4194304}}],\"n\":{n}}}"
    );
    [
        VersionedCommand::V1(CommandV1::CreateUpload {
            id: upload,
            repo: repo.clone(),
            at_ms: 1_700_000_000_000 + n,
        }),
        VersionedCommand::V1(CommandV1::CommitBlob {
            repo: repo.clone(),
            digest: blob.clone(),
            size: 4 * 1024 * 1024,
            layout: BlobLayout::Striped(layout),
            upload: Some(upload),
            at_ms: 1_700_000_000_000 + n,
        }),
        VersionedCommand::V1(CommandV1::PutManifest {
            repo: repo.clone(),
            record: ManifestRecord {
                digest: digest(2, n),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                bytes: manifest.into_bytes(),
                subject: None,
                artifact_type: None,
                annotations: BTreeMap::new(),
                pushed_at_ms: 1_700_000_000_000 + n,
            },
            tag: Some(format!("v{n}").parse().expect("a valid tag")),
            blobs: vec![blob],
            manifests: Vec::new(),
        }),
    ]
}

fn apply_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let sm = ApplyBench::open(dir.path()).expect("a state machine database");
    let repo: RepoName = "bench/apply".parse().expect("a valid repository");
    let mut next = 0u64;
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(3 * IMAGES_PER_BATCH));
    g.bench_function("apply_batch_32_images", |b| {
        b.iter_batched(
            || {
                let batch: Vec<VersionedCommand> = (next..next + IMAGES_PER_BATCH)
                    .flat_map(|n| image(&repo, n))
                    .collect();
                next += IMAGES_PER_BATCH;
                batch
            },
            |batch| {
                let outcomes = sm.apply_batch(batch).expect("apply");
                assert!(
                    outcomes.iter().all(|o| matches!(
                        o,
                        Outcome::UploadCreated
                            | Outcome::BlobCommitted { .. }
                            | Outcome::ManifestPut
                    )),
                    "every command applies: {outcomes:?}"
                );
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, apply_batch);
criterion_main!(benches);
