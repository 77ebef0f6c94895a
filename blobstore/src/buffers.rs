//! Read buffers for shard chunks, reused instead of allocated per chunk, and shared
//! between reads of the same chunk.
//!
//! A chunk read for a pull is a buffer of `shard_bytes + 32` that lives until the HTTP
//! layer has sent it. Allocating each one fresh cost about a fifth of a node's CPU time
//! while serving 64 MiB pulls (zeroing the buffer, then page faults and memory-cgroup
//! charging as the allocator handed back and re-mapped memory of that size); a freed
//! buffer now goes back to a small pool that the next read takes it from. The pool
//! keeps at most `POOL_BYTES_MAX` bytes; whatever does not fit is freed as before.
//!
//! A verified chunk of a committed shard file can also be shared: while any read still
//! holds it (in its read-ahead or in a response being sent), another read of the same
//! chunk takes the same buffer instead of reading and checking the file again. A herd
//! of clients pulling one image at once then holds each chunk once, not once per
//! client, and reads it from disk about once. Nothing is kept for sharing: the map
//! holds weak references, and an entry goes when the last holder lets its buffer go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use berth_types::UploadId;
use bytes::Bytes;

/// Bytes of free buffers a store keeps for reuse: enough for four pulls of 1 MiB
/// shards, each with its read-ahead and the chunk being sent.
pub(crate) const POOL_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One chunk of a committed shard file, whose bytes never change: an upload id names
/// one write of a blob, and its files are never rewritten in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ChunkKey {
    pub upload: UploadId,
    pub index: u8,
    pub stripe: u64,
}

/// Free chunk buffers of one store, and the verified chunks reads hold now.
#[derive(Debug, Default)]
pub(crate) struct ChunkBuffers {
    free: Mutex<Free>,
    live: Mutex<HashMap<ChunkKey, Weak<SharedBuf>>>,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    /// Sum of the capacities of `buffers`.
    bytes: usize,
}

impl ChunkBuffers {
    /// A buffer of exactly `len` bytes: a reused one when the pool has one (its old
    /// contents are left in place for the caller to overwrite), else a new zeroed one.
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = {
            let mut free = self.free.lock().expect("chunk buffer pool poisoned");
            let buf = free.buffers.pop();
            if let Some(buf) = &buf {
                free.bytes -= buf.capacity();
            }
            buf
        };
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().expect("chunk buffer pool poisoned");
        if free.bytes + buf.capacity() <= POOL_BYTES_MAX {
            free.bytes += buf.capacity();
            free.buffers.push(buf);
        }
    }

    /// The buffer of chunk `key` if a read holds it now (whole: what `share` was given).
    pub fn live(&self, key: &ChunkKey) -> Option<Bytes> {
        let live = self.live.lock().expect("live chunk map poisoned");
        let shared = live.get(key)?.upgrade()?;
        Some(Bytes::from_owner(SharedRef(shared)))
    }

    /// Shares `buf`, the verified chunk `key`, with reads that ask for it while this
    /// one (or any that took it) still holds it.
    pub fn share(&self, key: ChunkKey, buf: PooledBuf) -> Bytes {
        let shared = Arc::new(SharedBuf { buf, key });
        self.live
            .lock()
            .expect("live chunk map poisoned")
            .insert(key, Arc::downgrade(&shared));
        Bytes::from_owner(SharedRef(shared))
    }

    /// Chunks in the live map.
    #[cfg(test)]
    fn live_chunks(&self) -> usize {
        self.live.lock().expect("live chunk map poisoned").len()
    }

    /// Bytes the pool holds now.
    #[cfg(test)]
    fn pooled_bytes(&self) -> usize {
        self.free.lock().expect("chunk buffer pool poisoned").bytes
    }
}

/// A buffer taken from a `ChunkBuffers`; it goes back to the pool when dropped, or
/// when the last `Bytes` made from it by `freeze` is.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<ChunkBuffers>,
}

impl PooledBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Shares the buffer as `Bytes` without copying it.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// A chunk in the live map; leaves it when the last holder drops it.
#[derive(Debug)]
struct SharedBuf {
    buf: PooledBuf,
    key: ChunkKey,
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        let mut live = self.buf.pool.live.lock().expect("live chunk map poisoned");
        // A later read may have put a newer buffer of the same chunk in the map.
        if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            live.remove(&self.key);
        }
    }
}

/// One holder of a shared chunk, as the owner of a `Bytes`.
struct SharedRef(Arc<SharedBuf>);

impl AsRef<[u8]> for SharedRef {
    fn as_ref(&self) -> &[u8] {
        self.0.buf.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_buffer_is_reused_by_the_next_take() {
        let pool = Arc::new(ChunkBuffers::default());
        let mut first = pool.take(1024);
        first.as_mut_slice()[0] = 7;
        let ptr = first.as_ref().as_ptr();
        let bytes = first.freeze().slice(1..);
        assert_eq!(pool.pooled_bytes(), 0, "in use while a slice of it lives");
        drop(bytes);
        assert_eq!(pool.pooled_bytes(), 1024);
        let second = pool.take(1000);
        assert_eq!(second.as_ref().as_ptr(), ptr);
        assert_eq!(second.as_ref().len(), 1000);
        assert_eq!(pool.pooled_bytes(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_its_byte_budget() {
        let pool = Arc::new(ChunkBuffers::default());
        let len = POOL_BYTES_MAX / 4 + 1;
        let taken: Vec<PooledBuf> = (0..6).map(|_| pool.take(len)).collect();
        drop(taken);
        assert!(pool.pooled_bytes() <= POOL_BYTES_MAX);
        assert_eq!(pool.pooled_bytes(), 3 * len);
    }

    fn key(stripe: u64) -> ChunkKey {
        ChunkKey {
            upload: UploadId::new(berth_types::NodeId(1), 9),
            index: 0,
            stripe,
        }
    }

    #[test]
    fn a_shared_chunk_is_found_while_held_and_gone_after() {
        let pool = Arc::new(ChunkBuffers::default());
        let mut buf = pool.take(64);
        buf.as_mut_slice()[0] = 42;
        let first = pool.share(key(3), buf).slice(1..);
        let second = pool.live(&key(3)).expect("held by the first read");
        assert_eq!(second[0], 42);
        assert_eq!(
            second.as_ptr(),
            first.as_ptr().wrapping_sub(1),
            "the same buffer"
        );
        assert!(pool.live(&key(4)).is_none());
        drop(first);
        assert!(
            pool.live(&key(3)).is_some(),
            "still held by the second read"
        );
        drop(second);
        assert!(pool.live(&key(3)).is_none());
        assert_eq!(pool.live_chunks(), 0, "the entry left with its last holder");
        assert_eq!(
            pool.pooled_bytes(),
            64,
            "and the buffer went back to the pool"
        );
    }

    #[test]
    fn a_newer_buffer_of_a_chunk_outlives_the_older_one_in_the_map() {
        let pool = Arc::new(ChunkBuffers::default());
        let old = pool.share(key(1), pool.take(8));
        let new = pool.share(key(1), pool.take(8));
        drop(old);
        let found = pool.live(&key(1)).expect("the newer buffer is still held");
        assert_eq!(found.as_ptr(), new.as_ptr());
        drop((found, new));
        assert_eq!(pool.live_chunks(), 0);
    }
}
