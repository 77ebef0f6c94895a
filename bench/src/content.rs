//! Benchmark payloads: byte sizes as written on the command line, and deterministic,
//! incompressible-looking blob content with its sha256 digest.

use anyhow::Context;
use bytes::Bytes;
use sha2::Digest as _;

/// Parses `64M`, `512K`, `1G` or a plain byte count; the suffixes are binary multiples.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {s:?} does not fit in 64 bits"))
}

/// The shortest exact spelling of a size that [`parse_size`] reads back.
pub fn fmt_size(bytes: u64) -> String {
    for (shift, suffix) in [(30, 'G'), (20, 'M'), (10, 'K')] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Content of blob `i` for a run seeded with `seed`: the same inputs give the same
/// bytes, and a new seed gives new digests, so a rerun against the same registry
/// never finds its blobs already stored.
pub fn blob_bytes(seed: u64, i: usize, size: u64) -> Bytes {
    // splitmix64 of (seed, i) seeds a xorshift64 stream; the state is never zero.
    let mut z = seed
        .wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut x = (z ^ (z >> 31)) | 1;
    let mut out = Vec::with_capacity(size as usize + 8);
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    Bytes::from(out)
}

/// The OCI digest (`sha256:<hex>`) of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        let cases: &[(&str, Option<u64>)] = &[
            ("64M", Some(64 << 20)),
            ("1G", Some(1 << 30)),
            ("512k", Some(512 << 10)),
            ("10", Some(10)),
            (" 3m ", Some(3 << 20)),
            ("0", Some(0)),
            ("x", None),
            ("", None),
            ("M", None),
            ("-1K", None),
            ("1.5M", None),
            ("17179869184G", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), *want, "parse_size({input:?})");
        }
    }

    #[test]
    fn sizes_format_exactly_and_read_back() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (1000, "1000"),
            (1024, "1K"),
            (1536, "1536"),
            (256 << 10, "256K"),
            (64 << 20, "64M"),
            ((1 << 20) + (1 << 10), "1025K"),
            (2 << 30, "2G"),
        ];
        for (bytes, want) in cases {
            assert_eq!(fmt_size(*bytes), *want);
            assert_eq!(parse_size(want).unwrap(), *bytes);
        }
    }

    #[test]
    fn blob_content_is_deterministic_and_distinct() {
        assert_eq!(blob_bytes(7, 1, 1000), blob_bytes(7, 1, 1000));
        assert_ne!(blob_bytes(7, 1, 1000), blob_bytes(7, 2, 1000));
        assert_ne!(blob_bytes(7, 1, 1000), blob_bytes(8, 1, 1000));
        assert_eq!(blob_bytes(7, 3, 1001).len(), 1001);
        assert!(blob_bytes(0, 0, 0).is_empty());
    }

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
