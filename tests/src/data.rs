//! Test data: digest strings, random blobs, and a deterministic byte stream that can be
//! generated twice (once to upload, once to check) without holding it in memory.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest as _, Sha256, Sha512};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub fn sha512_digest(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    rand::rng().fill_bytes(&mut buf);
    buf
}

/// A random lowercase alphanumeric string of `len` characters, for unique names.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A unique repository name under `prefix`, e.g. `conformance/pull-3k9x0a2b`.
pub fn unique_repo(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix(10))
}

/// The empty JSON object used as the config of artifacts without one.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Media type of [`EMPTY_CONFIG`].
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// A deterministic pseudo-random stream of `len` bytes from `seed`, produced in chunks.
/// Generating it twice with the same seed yields the same bytes.
pub struct ByteStream {
    rng: StdRng,
    remaining: u64,
    chunk: usize,
}

impl ByteStream {
    /// A stream of `len` bytes in chunks of at most `chunk` bytes.
    pub fn new(seed: u64, len: u64, chunk: usize) -> ByteStream {
        ByteStream {
            rng: StdRng::seed_from_u64(seed),
            remaining: len,
            chunk: chunk.max(1),
        }
    }

    /// The next chunk, or `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(self.chunk as u64) as usize;
        let mut buf = vec![0u8; n];
        self.rng.fill_bytes(&mut buf);
        self.remaining -= n as u64;
        Some(Bytes::from(buf))
    }

    /// The sha256 digest of the whole stream (consumes it).
    pub fn sha256(mut self) -> String {
        let mut hasher = Sha256::new();
        while let Some(chunk) = self.next_chunk() {
            hasher.update(&chunk);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }

    /// The stream as a request body that never holds more than one chunk.
    pub fn into_body(self) -> reqwest::Body {
        let stream = futures::stream::unfold(self, |mut s| async move {
            s.next_chunk()
                .map(|chunk| (Ok::<Bytes, std::io::Error>(chunk), s))
        });
        reqwest::Body::wrap_stream(stream)
    }
}
