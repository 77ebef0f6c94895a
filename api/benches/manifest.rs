//! Micro-benchmark of manifest validation on `PUT /v2/<name>/manifests/<ref>`:
//! `api::manifest::parse` (JSON, media type against Content-Type, schema, every
//! descriptor's digest, the manifest's own digest) over an image manifest with a
//! config and 10 layers, and over an index of 8 platform manifests.
//! `cargo bench -p berth-api --bench manifest`; CI only compiles it.

use std::hint::black_box;

use berth_api::manifest;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn digest(n: usize) -> String {
    format!("sha256:{}", format!("{:02x}", n % 256).repeat(32))
}

fn descriptor(media_type: &str, n: usize, size: u64, extra: &str) -> String {
    format!(
        "{{\"mediaType\":\"{media_type}\",\"digest\":\"{}\",\"size\":{size}{extra}}}",
        digest(n)
    )
}

fn image_manifest() -> Vec<u8> {
    let layers: Vec<String> = (0..10)
        .map(|i| {
            descriptor(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                i + 2,
                30_000_000,
                "",
            )
        })
        .collect();
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{IMAGE}\",\"config\":{},\"layers\":[{}],\
         \"annotations\":{{\"org.opencontainers.image.created\":\"2026-01-01T00:00:00Z\"}}}}",
        descriptor("application/vnd.oci.image.config.v1+json", 1, 7_023, ""),
        layers.join(",")
    )
    .into_bytes()
}

fn index_manifest() -> Vec<u8> {
    let manifests: Vec<String> = [
        "amd64", "arm64", "arm", "ppc64le", "s390x", "386", "riscv64", "mips64le",
    ]
    .iter()
    .enumerate()
    .map(|(i, arch)| {
        descriptor(
            IMAGE,
            i + 20,
            1_234,
            &format!(",\"platform\":{{\"architecture\":\"{arch}\",\"os\":\"linux\"}}"),
        )
    })
    .collect();
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{INDEX}\",\"manifests\":[{}]}}",
        manifests.join(",")
    )
    .into_bytes()
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("manifest_parse");
    for (name, media_type, bytes) in [
        ("image_10_layers", IMAGE, image_manifest()),
        ("index_8_platforms", INDEX, index_manifest()),
    ] {
        let parsed = manifest::parse(Some(media_type), &bytes, None).expect("a valid manifest");
        assert!(!parsed.blobs.is_empty() || !parsed.manifests.is_empty());
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| manifest::parse(Some(media_type), black_box(&bytes), None).expect("valid"))
        });
    }
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
