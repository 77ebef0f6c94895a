//! The `Disk` trait, the only way the store touches storage, and `FsDisk`, a disk
//! backed by a directory of a real filesystem. Methods block; the store calls them
//! from `tokio::task::spawn_blocking`. Paths are relative to the disk's root.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_types::DiskId;
use serde::{Deserialize, Serialize};

use crate::error::BlobStoreError;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    /// Last modification time: how the orphan sweep tells a fresh file from an old one.
    pub modified: SystemTime,
}

/// An open file of a disk.
pub trait DiskFile: Send + Sync {
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fills all of `buf` from `offset`; `UnexpectedEof` if the file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Makes the written bytes durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing `len` bytes from `offset` to the device without waiting for
    /// them, so that `sync_data` at the end finds little left to write. Only a hint:
    /// the bytes are durable after `sync_data`, which also reports any write error.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Size of the file in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A storage device of this node.
pub trait Disk: Send + Sync + std::fmt::Debug {
    fn id(&self) -> DiskId;
    /// Where the disk is, for operators: a directory, or a name for simulated disks.
    fn location(&self) -> String;
    /// Creates (or truncates) a file for writing and reading.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens an existing file for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Creates a directory and its missing parents. Not durable until the parents are
    /// synced with `sync_dir`.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames a file. Durable once both parent directories are synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creates, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    fn total_bytes(&self) -> io::Result<u64>;
    fn free_bytes(&self) -> io::Result<u64>;
}

/// Name of the label file at the root of every filesystem disk.
pub const LABEL_FILE: &str = "disk.json";
/// Version of the label format written by this build.
pub const LABEL_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct DiskLabel {
    format_version: u32,
    disk_id: DiskId,
}

/// A disk that is a directory of a local filesystem.
#[derive(Debug)]
pub struct FsDisk {
    id: DiskId,
    root: PathBuf,
}

impl FsDisk {
    /// Opens the disk at `root`, creating the directory if needed. A disk keeps the id
    /// in its label; `id_if_new` is only written into the label of a disk that has none,
    /// so moving or reordering disks in the configuration never changes their ids.
    pub fn open(root: impl Into<PathBuf>, id_if_new: DiskId) -> Result<FsDisk, BlobStoreError> {
        let root = root.into();
        let label_path = root.join(LABEL_FILE);
        let io_err = |path: &Path, e| BlobStoreError::io(id_if_new, path, e);
        fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        let label = match fs::read(&label_path) {
            Ok(bytes) => serde_json::from_slice::<DiskLabel>(&bytes).map_err(|source| {
                BlobStoreError::DiskLabelUnreadable {
                    path: label_path.clone(),
                    source,
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let label = DiskLabel {
                    format_version: LABEL_FORMAT_VERSION,
                    disk_id: id_if_new,
                };
                write_label(&root, &label).map_err(|e| io_err(&label_path, e))?;
                label
            }
            Err(e) => return Err(io_err(&label_path, e)),
        };
        if label.format_version != LABEL_FORMAT_VERSION {
            return Err(BlobStoreError::DiskLabelVersion {
                path: label_path,
                version: label.format_version,
                supported: LABEL_FORMAT_VERSION,
            });
        }
        Ok(FsDisk {
            id: label.disk_id,
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Writes the label through a temporary file and a rename, so a crash leaves either no
/// label or a complete one.
fn write_label(root: &Path, label: &DiskLabel) -> io::Result<()> {
    let tmp = root.join(format!("{LABEL_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(label).map_err(io::Error::other)?;
    let file = File::create(&tmp)?;
    file.write_all_at(&bytes, 0)?;
    file.sync_all()?;
    fs::rename(&tmp, root.join(LABEL_FILE))?;
    File::open(root)?.sync_all()
}

struct FsFile(File);

impl DiskFile for FsFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is
        // owned by `self.0` and open for the whole call. SYNC_FILE_RANGE_WRITE starts
        // writeback of the range's dirty pages and does not wait for it.
        unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Disk for FsDisk {
    fn id(&self) -> DiskId {
        self.id
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.root.join(path))?;
        Ok(Box::new(FsFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(FsFile(File::open(self.root.join(path))?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(self.root.join(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.root.join(from), self.root.join(to))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(self.root.join(path))?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(self.root.join(path))
    }

    fn list(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join(path))? {
            let entry = entry?;
            // Every name berth writes is UTF-8; anything else is not ours to touch.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // A file removed between the listing and the stat is simply not listed.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(DirEntry {
                name,
                is_dir: meta.is_dir(),
                modified: meta.modified()?,
            });
        }
        Ok(out)
    }

    fn total_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.root)?;
        Ok(st.f_blocks.saturating_mul(st.f_frsize))
    }

    fn free_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.root)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_written_once_and_keeps_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::open(dir.path(), DiskId(7)).unwrap();
        assert_eq!(disk.id(), DiskId(7));
        let again = FsDisk::open(dir.path(), DiskId(9)).unwrap();
        assert_eq!(again.id(), DiskId(7));
        assert!(disk.total_bytes().unwrap() >= disk.free_bytes().unwrap());
    }

    #[test]
    fn label_of_a_future_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LABEL_FILE),
            br#"{"format_version": 2, "disk_id": 1}"#,
        )
        .unwrap();
        assert!(matches!(
            FsDisk::open(dir.path(), DiskId(1)),
            Err(BlobStoreError::DiskLabelVersion { version: 2, .. })
        ));
    }

    #[test]
    fn files_read_back_what_was_written_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::open(dir.path(), DiskId(0)).unwrap();
        disk.create_dir_all(Path::new("a/b")).unwrap();
        let f = disk.create(Path::new("a/b/f")).unwrap();
        f.write_at(b"world", 5).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        disk.rename(Path::new("a/b/f"), Path::new("a/g")).unwrap();
        disk.sync_dir(Path::new("a")).unwrap();
        let g = disk.open(Path::new("a/g")).unwrap();
        let mut buf = [0u8; 10];
        g.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"helloworld");
        let mut past_end = [0u8; 4];
        assert_eq!(
            g.read_at(&mut past_end, 8).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let names: Vec<_> = disk.list(Path::new("a")).unwrap();
        assert_eq!(names.len(), 2);
        disk.remove(Path::new("a/g")).unwrap();
        assert_eq!(
            disk.open(Path::new("a/g")).err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
    }
}
