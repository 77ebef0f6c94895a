//! `SimDisk`, an in-memory disk for crash tests. It keeps two views: what a running
//! system sees, and what would survive a power loss. File bytes become durable at
//! `sync_data`; directory entries (creates, renames, removals, new directories) become
//! durable when their parent directory is synced. `crash` throws away everything that
//! was not durable, the way a power cut does. `SimPower`, shared by several disks, cuts
//! the power of all of them after a given number of operations, so a test can stop the
//! store at every point of a write.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use berth_types::DiskId;

use crate::disk::{DirEntry, Disk, DiskFile};

/// A power switch shared by simulated disks. It counts every operation on any of
/// them; after `cut_after(n)`, the `n+1`-th operation from then on, and every one after
/// it, fails as if the machine had died.
#[derive(Debug)]
pub struct SimPower {
    spent: AtomicU64,
    /// Operation count at which the power goes; `u64::MAX` means it stays on.
    limit: AtomicU64,
}

impl SimPower {
    pub fn new() -> Arc<SimPower> {
        Arc::new(SimPower {
            spent: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
        })
    }

    pub fn cut_after(&self, ops: u64) {
        let spent = self.spent.load(Ordering::SeqCst);
        self.limit
            .store(spent.saturating_add(ops), Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
    }

    /// Operations attempted so far, lets a test size its loop over crash points.
    pub fn ops(&self) -> u64 {
        self.spent.load(Ordering::SeqCst)
    }

    fn spend(&self) -> io::Result<()> {
        let n = self.spent.fetch_add(1, Ordering::SeqCst);
        if n >= self.limit.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated power loss"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    modified: Option<SystemTime>,
}

#[derive(Debug)]
struct State {
    /// The namespace a running system sees.
    live: BTreeMap<PathBuf, Entry>,
    /// The namespace that survives a crash.
    durable: BTreeMap<PathBuf, Entry>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| i.data.len().max(i.synced.len()) as u64)
            .sum()
    }

    fn parent_is_dir(&self, path: &Path) -> bool {
        match path.parent() {
            None => true,
            Some(p) if p.as_os_str().is_empty() => true,
            Some(p) => self.live.get(p) == Some(&Entry::Dir),
        }
    }

    /// Drops inodes that no name, live or durable, refers to any more.
    fn collect_inodes(&mut self) {
        let referenced: std::collections::HashSet<u64> = self
            .live
            .values()
            .chain(self.durable.values())
            .filter_map(|e| match e {
                Entry::File(ino) => Some(*ino),
                Entry::Dir => None,
            })
            .collect();
        self.inodes.retain(|ino, _| referenced.contains(ino));
    }
}

#[derive(Debug)]
struct Shared {
    id: DiskId,
    capacity: u64,
    power: Arc<SimPower>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.power.spend()?;
        Ok(self.state.lock().expect("sim disk state poisoned"))
    }
}

/// An in-memory disk that loses unsynced writes on `crash`.
#[derive(Debug, Clone)]
pub struct SimDisk {
    shared: Arc<Shared>,
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn is_child(path: &Path, dir: &Path) -> bool {
    path.parent()
        .is_some_and(|p| p == dir || (p.as_os_str().is_empty() && dir.as_os_str().is_empty()))
}

impl SimDisk {
    /// An empty disk of `capacity` bytes, powered by `power`.
    pub fn new(id: DiskId, capacity: u64, power: Arc<SimPower>) -> SimDisk {
        SimDisk {
            shared: Arc::new(Shared {
                id,
                capacity,
                power,
                state: Mutex::new(State {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                    inodes: HashMap::new(),
                    next_inode: 0,
                }),
            }),
        }
    }

    /// Loses everything not yet durable: unsynced file bytes, and directory entries
    /// whose parent was not synced since they changed (and everything under them).
    pub fn crash(&self) {
        let mut st = self.shared.state.lock().expect("sim disk state poisoned");
        let durable = st.durable.clone();
        // An entry survives only if every ancestor directory survived too.
        let reachable: BTreeMap<PathBuf, Entry> = durable
            .iter()
            .filter(|(path, _)| {
                path.ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                    .all(|a| durable.get(a) == Some(&Entry::Dir))
            })
            .map(|(p, e)| (p.clone(), *e))
            .collect();
        st.live = reachable.clone();
        st.durable = reachable;
        for inode in st.inodes.values_mut() {
            inode.data = inode.synced.clone();
        }
        st.collect_inodes();
    }
}

struct SimFile {
    shared: Arc<Shared>,
    inode: u64,
}

impl DiskFile for SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.shared.lock()?;
        let end = usize::try_from(offset).map_err(io::Error::other)? + buf.len();
        let used = st.used_bytes();
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(not_found)?;
        let grows = end.saturating_sub(inode.data.len().max(inode.synced.len())) as u64;
        if used + grows > self.shared.capacity {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[end - buf.len()..end].copy_from_slice(buf);
        inode.modified = Some(SystemTime::now());
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.shared.lock()?;
        let inode = st.inodes.get(&self.inode).ok_or_else(not_found)?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let bytes = inode
            .data
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.shared.lock()?;
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(not_found)?;
        inode.synced = inode.data.clone();
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let st = self.shared.lock()?;
        let inode = st.inodes.get(&self.inode).ok_or_else(not_found)?;
        Ok(inode.data.len() as u64)
    }
}

impl Disk for SimDisk {
    fn id(&self) -> DiskId {
        self.shared.id
    }

    fn location(&self) -> String {
        format!("sim:{}", self.shared.id)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut st = self.shared.lock()?;
        if !st.parent_is_dir(path) {
            return Err(not_found());
        }
        let inode = match st.live.get(path) {
            Some(Entry::Dir) => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
            Some(Entry::File(ino)) => {
                let ino = *ino;
                let inode = st.inodes.get_mut(&ino).ok_or_else(not_found)?;
                inode.data.clear();
                inode.modified = Some(SystemTime::now());
                ino
            }
            None => {
                let ino = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(
                    ino,
                    Inode {
                        modified: Some(SystemTime::now()),
                        ..Inode::default()
                    },
                );
                st.live.insert(path.to_path_buf(), Entry::File(ino));
                ino
            }
        };
        Ok(Box::new(SimFile {
            shared: self.shared.clone(),
            inode,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let st = self.shared.lock()?;
        match st.live.get(path) {
            Some(Entry::File(ino)) => Ok(Box::new(SimFile {
                shared: self.shared.clone(),
                inode: *ino,
            })),
            Some(Entry::Dir) => Err(io::Error::from(io::ErrorKind::IsADirectory)),
            None => Err(not_found()),
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.shared.lock()?;
        let mut dirs: Vec<&Path> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        dirs.reverse();
        for dir in dirs {
            match st.live.get(dir) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
                None => {
                    st.live.insert(dir.to_path_buf(), Entry::Dir);
                }
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.shared.lock()?;
        if !st.parent_is_dir(to) {
            return Err(not_found());
        }
        match st.live.get(from).copied() {
            Some(Entry::File(ino)) => {
                st.live.remove(from);
                st.live.insert(to.to_path_buf(), Entry::File(ino));
                st.collect_inodes();
                Ok(())
            }
            Some(Entry::Dir) => Err(io::Error::from(io::ErrorKind::IsADirectory)),
            None => Err(not_found()),
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.shared.lock()?;
        if !path.as_os_str().is_empty() && st.live.get(path) != Some(&Entry::Dir) {
            return Err(not_found());
        }
        st.durable.retain(|p, _| !is_child(p, path));
        let children: Vec<(PathBuf, Entry)> = st
            .live
            .iter()
            .filter(|(p, _)| is_child(p, path))
            .map(|(p, e)| (p.clone(), *e))
            .collect();
        st.durable.extend(children);
        st.collect_inodes();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.shared.lock()?;
        match st.live.get(path) {
            Some(Entry::File(_)) => {
                st.live.remove(path);
                st.collect_inodes();
                Ok(())
            }
            Some(Entry::Dir) => Err(io::Error::from(io::ErrorKind::IsADirectory)),
            None => Err(not_found()),
        }
    }

    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let st = self.shared.lock()?;
        if !path.as_os_str().is_empty() && st.live.get(path) != Some(&Entry::Dir) {
            return Err(not_found());
        }
        Ok(st
            .live
            .iter()
            .filter(|(p, _)| is_child(p, path))
            .map(|(p, e)| DirEntry {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                is_dir: *e == Entry::Dir,
                modified: match e {
                    Entry::File(ino) => st.inodes.get(ino).and_then(|i| i.modified),
                    Entry::Dir => None,
                }
                .unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect())
    }

    fn total_bytes(&self) -> io::Result<u64> {
        self.shared.power.spend()?;
        Ok(self.shared.capacity)
    }

    fn free_bytes(&self) -> io::Result<u64> {
        let st = self.shared.lock()?;
        Ok(self.shared.capacity.saturating_sub(st.used_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> SimDisk {
        SimDisk::new(DiskId(1), 1 << 20, SimPower::new())
    }

    fn read_all(disk: &SimDisk, path: &str) -> io::Result<Vec<u8>> {
        let f = disk.open(Path::new(path))?;
        let mut buf = vec![0; f.size()? as usize];
        f.read_at(&mut buf, 0)?;
        Ok(buf)
    }

    #[test]
    fn crash_loses_unsynced_bytes_and_unsynced_names() {
        let d = disk();
        d.create_dir_all(Path::new("a")).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        let f = d.create(Path::new("a/synced")).unwrap();
        f.write_at(b"kept", 0).unwrap();
        f.sync_data().unwrap();
        d.sync_dir(Path::new("a")).unwrap();
        f.write_at(b"lost", 4).unwrap();
        let g = d.create(Path::new("a/unsynced-name")).unwrap();
        g.write_at(b"x", 0).unwrap();
        g.sync_data().unwrap();
        d.crash();
        assert_eq!(read_all(&d, "a/synced").unwrap(), b"kept");
        assert_eq!(
            read_all(&d, "a/unsynced-name").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn rename_is_durable_only_after_the_directory_sync() {
        let d = disk();
        d.create_dir_all(Path::new("s")).unwrap();
        d.create_dir_all(Path::new("f")).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        let f = d.create(Path::new("s/x")).unwrap();
        f.write_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        d.sync_dir(Path::new("s")).unwrap();
        d.rename(Path::new("s/x"), Path::new("f/x")).unwrap();
        d.crash();
        assert!(read_all(&d, "f/x").is_err());
        assert_eq!(read_all(&d, "s/x").unwrap(), b"data");
        d.rename(Path::new("s/x"), Path::new("f/x")).unwrap();
        d.sync_dir(Path::new("f")).unwrap();
        d.crash();
        assert_eq!(read_all(&d, "f/x").unwrap(), b"data");
    }

    #[test]
    fn a_directory_that_was_never_synced_into_its_parent_vanishes() {
        let d = disk();
        d.create_dir_all(Path::new("a/b")).unwrap();
        d.sync_dir(Path::new("a")).unwrap();
        let f = d.create(Path::new("a/b/x")).unwrap();
        f.sync_data().unwrap();
        d.sync_dir(Path::new("a/b")).unwrap();
        d.crash();
        assert!(d.list(Path::new("")).unwrap().is_empty());
    }

    #[test]
    fn writes_past_capacity_fail_with_storage_full() {
        let d = SimDisk::new(DiskId(1), 10, SimPower::new());
        let f = d.create(Path::new("x")).unwrap();
        f.write_at(&[1; 8], 0).unwrap();
        assert_eq!(
            f.write_at(&[1; 8], 8).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert_eq!(d.free_bytes().unwrap(), 2);
    }

    #[test]
    fn power_cut_fails_every_later_operation() {
        let power = SimPower::new();
        let d = SimDisk::new(DiskId(1), 100, power.clone());
        power.cut_after(1);
        d.create_dir_all(Path::new("a")).unwrap();
        assert!(d.sync_dir(Path::new("")).is_err());
        assert!(d.list(Path::new("")).is_err());
        power.restore();
        d.crash();
        assert!(d.list(Path::new("")).unwrap().is_empty());
    }
}
