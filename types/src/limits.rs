//! Named limits. Every size, count and duration berth bounds lives here, with its unit
//! last in its name, and the relations between them are checked at compile time.

/// Longest repository name accepted (the OCI distribution limit).
pub const REPO_NAME_BYTES_MAX: usize = 255;
/// Longest tag accepted.
pub const TAG_BYTES_MAX: usize = 128;
/// Largest manifest accepted and stored.
pub const MANIFEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Blobs up to this size are stored inline in the metadata instead of erasure-coded.
pub const INLINE_BLOB_BYTES_MAX: usize = 64 * 1024;
/// Default size of one erasure-coded shard of one stripe.
pub const SHARD_BYTES_DEFAULT: u32 = 1024 * 1024;
/// Largest shard size a profile may configure.
pub const SHARD_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Largest number of data shards in a stripe.
pub const EC_DATA_SHARDS_MAX: u8 = 16;
/// Largest number of parity shards in a stripe.
pub const EC_PARITY_SHARDS_MAX: u8 = 8;
/// Largest page a tags or catalog listing returns.
pub const LIST_PAGE_ENTRIES_MAX: usize = 10_000;
/// Page size used when a listing request does not give `n`.
pub const LIST_PAGE_ENTRIES_DEFAULT: usize = 1_000;
/// Upload sessions idle longer than this are cancelled and their data removed.
pub const UPLOAD_TTL_SECS_DEFAULT: u64 = 24 * 60 * 60;
/// Most upload sessions one node holds open at once. An open session may hold up to
/// one stripe of bytes in memory between chunks, so this bounds upload memory at
/// `UPLOAD_SESSIONS_MAX * k * shard_bytes` (1 GiB at the single-disk default).
pub const UPLOAD_SESSIONS_MAX: usize = 1_000;
/// Most unlinked blobs one upkeep pass collects.
pub const GC_BLOBS_PER_PASS_MAX: usize = 1_000;
/// Most referrers returned for one subject.
pub const REFERRERS_ENTRIES_MAX: usize = 10_000;

const _: () = assert!(INLINE_BLOB_BYTES_MAX < SHARD_BYTES_DEFAULT as usize);
const _: () = assert!(SHARD_BYTES_DEFAULT <= SHARD_BYTES_MAX);
const _: () = assert!(LIST_PAGE_ENTRIES_DEFAULT <= LIST_PAGE_ENTRIES_MAX);
const _: () = assert!(MANIFEST_BYTES_MAX as u64 <= SHARD_BYTES_MAX as u64);
