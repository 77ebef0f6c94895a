//! Micro-benchmarks of the per-byte work behind every push and pull of a striped blob:
//! the content digest (sha256) and the chunk checksum (blake3) over one 1 MiB shard,
//! Reed-Solomon encode and reconstruct of one stripe of 1 MiB shards per profile, and
//! writing one shard file of a stripe's chunk with fdatasync on a real filesystem.
//! `cargo bench -p berth-blobstore --bench shards`; CI only compiles them.

use std::hint::black_box;
use std::path::Path;

use berth_blobstore::format::{self, ShardHeader};
use berth_blobstore::{Disk, FsDisk, codec_for};
use berth_types::{CodecId, DiskId, EcProfile};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::Digest as _;

const SHARD_BYTES: usize = 1024 * 1024;

/// Deterministic, incompressible-looking bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hashes(c: &mut Criterion) {
    let shard = bytes(SHARD_BYTES, 1);
    let mut g = c.benchmark_group("hash_1MiB");
    g.throughput(Throughput::Bytes(SHARD_BYTES as u64));
    g.bench_function("sha256", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(&shard)))
    });
    g.bench_function("blake3_chunk_checksum", |b| {
        b.iter(|| format::chunk_checksum(black_box(7), black_box(&shard)))
    });
    g.finish();
}

const PROFILES: [(u8, u8); 4] = [(1, 1), (2, 1), (3, 2), (4, 2)];

fn reed_solomon(c: &mut Criterion) {
    let mut g = c.benchmark_group("reed_solomon_1MiB_shards");
    for (k, m) in PROFILES {
        let profile = EcProfile::new(k, m).expect("a valid profile");
        let codec = codec_for(CodecId::ReedSolomonV1, profile);
        let data: Vec<Vec<u8>> = (0..k).map(|i| bytes(SHARD_BYTES, u64::from(i))).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let parity = codec.encode(&refs).expect("encode");
        // Data bytes of one stripe: what a client pushes or pulls through it.
        g.throughput(Throughput::Bytes((usize::from(k) * SHARD_BYTES) as u64));
        g.bench_function(format!("encode_{k}+{m}"), |b| {
            b.iter(|| codec.encode(black_box(&refs)).expect("encode"))
        });
        // The worst a read meets: the first `m` data shards lost, rebuilt from parity.
        let lost: Vec<usize> = (0..usize::from(m).min(usize::from(k))).collect();
        let stripe: Vec<Option<&[u8]>> = data
            .iter()
            .chain(&parity)
            .enumerate()
            .map(|(i, s)| (!lost.contains(&i)).then_some(s.as_slice()))
            .collect();
        g.bench_function(format!("reconstruct_{k}+{m}_lose_{}", lost.len()), |b| {
            b.iter(|| {
                codec
                    .reconstruct(black_box(&stripe), &lost)
                    .expect("reconstruct")
            })
        });
    }
    g.finish();
}

/// One shard file per iteration: created (truncated), header and one 1 MiB chunk
/// written, then fdatasynced, as the writer does for each shard of a one-stripe blob.
/// The file is in `TMPDIR` (or `/tmp`), so this measures that filesystem.
fn shard_file_write_sync(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let disk = FsDisk::open(dir.path(), DiskId(1)).expect("a disk");
    let header = ShardHeader {
        codec: CodecId::ReedSolomonV1,
        profile: EcProfile::new(1, 0).expect("a valid profile"),
        shard_index: 0,
        shard_bytes: SHARD_BYTES as u32,
    };
    let shard = bytes(SHARD_BYTES, 9);
    let sum = format::chunk_checksum(0, &shard);
    let path = Path::new("bench.0");
    let offset = format::chunk_offset(header.shard_bytes, 0);
    let mut g = c.benchmark_group("shard_file");
    g.throughput(Throughput::Bytes(SHARD_BYTES as u64));
    g.sample_size(20);
    g.bench_function("write_1MiB_fdatasync", |b| {
        b.iter(|| {
            let file = disk.create(path).expect("create");
            file.write_at(&header.encode(), 0).expect("header");
            file.write_at(&sum, offset).expect("checksum");
            file.write_at(&shard, offset + format::CHECKSUM_BYTES)
                .expect("chunk");
            file.sync_data().expect("fdatasync");
        })
    });
    g.finish();
}

criterion_group!(benches, hashes, reed_solomon, shard_file_write_sync);
criterion_main!(benches);
