//! Placement: which disks hold the `k + m` shard files of an upload. A pure function of
//! a key (the upload id) and the candidate disks, so every caller that sees the same
//! disks computes the same answer, and tests need no I/O. Weighted rendezvous hashing:
//! each disk draws a score from a hash of (key, disk) scaled by its free space; the
//! best `width` scores win, in order. Adding or removing a disk only moves the shards
//! that it wins or held.

use berth_types::DiskId;

/// Whether a disk takes new shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    /// Takes new shards and serves reads.
    Active,
    /// Below its free-space reserve: serves reads, takes no new shards.
    Full,
    /// Failed an operation, or cannot report its space: takes no new shards.
    Failed,
}

/// A disk as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub disk: DiskId,
    pub free_bytes: u64,
    pub state: DiskState,
}

/// Not enough usable disks for a stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} usable disks are needed, {available} are available")]
pub struct PlacementError {
    pub needed: usize,
    pub available: usize,
}

/// Chooses `width` distinct active disks for the shards of `key`; entry `i` holds shard
/// `i`. Candidates must have distinct ids.
pub fn place(
    key: &[u8],
    candidates: &[Candidate],
    width: usize,
) -> Result<Vec<DiskId>, PlacementError> {
    let mut scored: Vec<(f64, DiskId)> = candidates
        .iter()
        .filter(|c| c.state == DiskState::Active)
        .map(|c| (score(key, c.disk, c.free_bytes), c.disk))
        .collect();
    if scored.len() < width {
        return Err(PlacementError {
            needed: width,
            available: scored.len(),
        });
    }
    // Highest score first; ties (equal hashes are practically impossible, equal zero
    // weights are not) broken by disk id so the order never depends on input order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(scored.into_iter().take(width).map(|(_, d)| d).collect())
}

/// `-weight / ln(u)` with `u` uniform in (0, 1) from the hash: the weighted rendezvous
/// score, under which a disk wins with probability proportional to its weight.
fn score(key: &[u8], disk: DiskId, free_bytes: u64) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key);
    hasher.update(&disk.0.to_le_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let bits = u64::from_le_bytes(first) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    // Free space in MiB keeps the weight well inside f64 precision.
    let weight = (free_bytes >> 20) as f64 + 1.0;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn disks(free: &[u64]) -> Vec<Candidate> {
        free.iter()
            .enumerate()
            .map(|(i, &f)| Candidate {
                disk: DiskId(i as u32),
                free_bytes: f << 30,
                state: DiskState::Active,
            })
            .collect()
    }

    proptest! {
        /// Same input, same answer, whatever the order of candidates; all disks distinct.
        #[test]
        fn placement_is_stable_and_distinct(key in any::<[u8; 16]>(), n in 1usize..12, width in 1usize..12) {
            let cands = disks(&vec![100; n]);
            let mut reversed = cands.clone();
            reversed.reverse();
            match place(&key, &cands, width) {
                Ok(chosen) => {
                    prop_assert_eq!(chosen.len(), width);
                    let mut sorted = chosen.clone();
                    sorted.sort();
                    sorted.dedup();
                    prop_assert_eq!(sorted.len(), width);
                    prop_assert_eq!(place(&key, &reversed, width).unwrap(), chosen);
                }
                Err(e) => prop_assert_eq!(e, PlacementError { needed: width, available: n }),
            }
        }

        /// Removing a disk that was not chosen changes nothing (rendezvous property).
        #[test]
        fn removing_an_unchosen_disk_moves_nothing(key in any::<[u8; 16]>(), drop in 0usize..8) {
            let cands = disks(&[100, 200, 300, 400, 500, 600, 700, 800]);
            let chosen = place(&key, &cands, 3).unwrap();
            if !chosen.contains(&DiskId(drop as u32)) {
                let fewer: Vec<_> = cands.iter().copied().filter(|c| c.disk != DiskId(drop as u32)).collect();
                prop_assert_eq!(place(&key, &fewer, 3).unwrap(), chosen);
            }
        }
    }

    #[test]
    fn full_and_failed_disks_are_skipped() {
        let mut cands = disks(&[100, 100, 100]);
        cands[0].state = DiskState::Full;
        cands[2].state = DiskState::Failed;
        for key in 0u32..50 {
            assert_eq!(
                place(&key.to_le_bytes(), &cands, 1).unwrap(),
                vec![DiskId(1)]
            );
        }
        assert_eq!(
            place(b"k", &cands, 2),
            Err(PlacementError {
                needed: 2,
                available: 1
            })
        );
    }

    #[test]
    fn disks_with_more_free_space_win_more_often() {
        let cands = disks(&[100, 900]);
        let big_wins = (0u32..2000)
            .filter(|k| place(&k.to_le_bytes(), &cands, 1).unwrap() == vec![DiskId(1)])
            .count();
        // Expected 90%; the bound leaves room for hash noise over 2000 keys.
        assert!((1700..1900).contains(&big_wins), "{big_wins}");
    }
}
