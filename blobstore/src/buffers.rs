//! Read buffers for shard chunks, reused instead of allocated per chunk. A chunk read
//! for a pull is a buffer of `shard_bytes + 32` that lives until the HTTP layer has
//! sent it. Allocating each one fresh cost about a fifth of a node's CPU time while
//! serving 64 MiB pulls (zeroing the buffer, then page faults and memory-cgroup
//! charging as the allocator handed back and re-mapped memory of that size); a freed
//! buffer now goes back to a small pool that the next read takes it from. The pool
//! keeps at most `POOL_BYTES_MAX` bytes; whatever does not fit is freed as before.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bytes of free buffers a store keeps for reuse: enough for four pulls of 1 MiB
/// shards, each with its read-ahead and the chunk being sent.
pub(crate) const POOL_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Free chunk buffers of one store.
#[derive(Debug, Default)]
pub(crate) struct ChunkBuffers {
    free: Mutex<Free>,
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
}
