//! Snapshots as files in `<metadata dir>/snapshots/`: the state tables are written as a
//! stream of framed entries, sent to a peer in chunks read from the file, received
//! into a staged file, and installed by reading it back frame by frame. No step holds
//! a whole snapshot in memory; a snapshot costs disk space and one chunk of memory.
//!
//! Format: the magic `BERTHSNAP`, the format version (one byte, 2), then frames:
//! - `T` u32 length, table name: the entries that follow belong to this table;
//! - `E` u32 length, key, u32 length, value;
//! - `Z`: the end; nothing may follow.
//!
//! Lengths are big-endian. A snapshot written by a build before this format (one
//! postcard value, without the magic) is still recognised and installed.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

/// The folder of snapshot files inside the metadata directory.
pub(crate) const DIR_NAME: &str = "snapshots";
const MAGIC: &[u8; 9] = b"BERTHSNAP";
const FORMAT: u8 = 2;
const TABLE: u8 = b'T';
const ENTRY: u8 = b'E';
const END: u8 = b'Z';
/// Longest table name, key or value a snapshot may hold. Values are bounded far
/// below this by the registry's own limits (a manifest is at most 4 MiB).
const FIELD_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Prefix of files being written or received; never a current snapshot.
const STAGED_PREFIX: &str = "staged-";
/// Prefix of complete snapshot files.
const SNAPSHOT_PREFIX: &str = "snap-";
/// Buffer of the snapshot writer and reader.
const BUFFER_BYTES: usize = 256 * 1024;

/// A complete snapshot file, open for reading. Cloning shares the open file, so a
/// snapshot being sent stays readable even after a newer one replaced it on disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    file: Arc<File>,
    name: String,
    bytes: u64,
    sha256: [u8; 32],
}

/// What the metadata store records about the current snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotFileRecord {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) sha256: [u8; 32],
}

impl SnapshotFile {
    /// Opens the snapshot file `record` describes in `dir`; `None` when it is missing.
    pub(crate) fn open(
        dir: &Path,
        record: &SnapshotFileRecord,
    ) -> io::Result<Option<SnapshotFile>> {
        let file = match File::open(dir.join(&record.name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes = file.metadata()?.len();
        if bytes != record.bytes {
            return Err(io::Error::other(format!(
                "snapshot file {} has {bytes} bytes, {} were recorded",
                record.name, record.bytes
            )));
        }
        Ok(Some(SnapshotFile {
            file: Arc::new(file),
            name: record.name.clone(),
            bytes,
            sha256: record.sha256,
        }))
    }

    pub(crate) fn record(&self) -> SnapshotFileRecord {
        SnapshotFileRecord {
            name: self.name.clone(),
            bytes: self.bytes,
            sha256: self.sha256,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn len(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// Reads up to `len` bytes at `offset` (fewer only at the end of the file).
    pub(crate) fn read_chunk(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let len = len.min(self.bytes.saturating_sub(offset) as usize);
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Reads the file's frames from the start.
    pub(crate) fn frames(&self) -> io::Result<Frames> {
        let at = ReadAt {
            file: self.file.clone(),
            pos: 0,
        };
        Frames::new(BufReader::with_capacity(BUFFER_BYTES, at))
    }
}

/// Sequential reads through positioned reads, so readers of one shared file handle
/// never move each other's position.
struct ReadAt {
    file: Arc<File>,
    pos: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A file being written (or received) under a staged name, hashed as it grows, and
/// published under its final name only once complete and durable.
pub(crate) struct StagedFile {
    dir: PathBuf,
    staged: PathBuf,
    /// `None` once published.
    out: Option<BufWriter<File>>,
    hasher: Sha256,
    bytes: u64,
}

impl StagedFile {
    pub(crate) fn create(dir: &Path) -> io::Result<StagedFile> {
        std::fs::create_dir_all(dir)?;
        let staged = dir.join(format!("{STAGED_PREFIX}{:032x}", rand::random::<u128>()));
        let file = File::options().write(true).create_new(true).open(&staged)?;
        Ok(StagedFile {
            dir: dir.to_owned(),
            staged,
            out: Some(BufWriter::with_capacity(BUFFER_BYTES, file)),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let out = self
            .out
            .as_mut()
            .expect("a staged file is written only before it is published");
        out.write_all(data)?;
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// The SHA-256 of the bytes written so far.
    pub(crate) fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Makes the file durable and publishes it under a snapshot name.
    pub(crate) fn publish(mut self) -> io::Result<SnapshotFile> {
        let sha256 = self.sha256();
        let file = self
            .out
            .take()
            .expect("a staged file is published once")
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let name = format!("{SNAPSHOT_PREFIX}{:032x}", rand::random::<u128>());
        std::fs::rename(&self.staged, self.dir.join(&name))?;
        File::open(&self.dir)?.sync_all()?;
        let file = File::open(self.dir.join(&name))?;
        Ok(SnapshotFile {
            file: Arc::new(file),
            name,
            bytes: self.bytes,
            sha256,
        })
    }
}

impl Drop for StagedFile {
    /// An abandoned file goes at once; a published one was renamed and is untouched.
    fn drop(&mut self) {
        std::fs::remove_file(&self.staged).ok();
    }
}

/// Writes a snapshot in this module's format.
pub(crate) struct SnapshotWriter {
    staged: StagedFile,
}

impl SnapshotWriter {
    pub(crate) fn create(dir: &Path) -> io::Result<SnapshotWriter> {
        let mut staged = StagedFile::create(dir)?;
        staged.write_all(MAGIC)?;
        staged.write_all(&[FORMAT])?;
        Ok(SnapshotWriter { staged })
    }

    fn field(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= FIELD_BYTES_MAX)
            .ok_or_else(|| io::Error::other("a snapshot field exceeds 64 MiB"))?;
        self.staged.write_all(&len.to_be_bytes())?;
        self.staged.write_all(bytes)
    }

    /// Starts the entries of table `name`.
    pub(crate) fn table(&mut self, name: &str) -> io::Result<()> {
        self.staged.write_all(&[TABLE])?;
        self.field(name.as_bytes())
    }

    pub(crate) fn entry(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.staged.write_all(&[ENTRY])?;
        self.field(key)?;
        self.field(value)
    }

    /// Ends the snapshot and publishes it.
    pub(crate) fn finish(mut self) -> io::Result<SnapshotFile> {
        self.staged.write_all(&[END])?;
        self.staged.publish()
    }
}

/// One frame of a snapshot file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Table(String),
    Entry(Vec<u8>, Vec<u8>),
}

/// The frames of a snapshot file, in order. A file without the magic is a snapshot
/// of the earlier format and is returned whole by [`Frames::legacy`].
pub(crate) struct Frames {
    reader: BufReader<ReadAt>,
    legacy: Option<Vec<u8>>,
    ended: bool,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed snapshot file: {what}"),
    )
}

impl Frames {
    fn new(mut reader: BufReader<ReadAt>) -> io::Result<Frames> {
        let mut head = [0u8; MAGIC.len() + 1];
        let mut got = 0;
        while got < head.len() {
            match reader.read(&mut head[got..])? {
                0 => break,
                n => got += n,
            }
        }
        if got == head.len() && &head[..MAGIC.len()] == MAGIC {
            if head[MAGIC.len()] != FORMAT {
                return Err(malformed("unknown format version"));
            }
            return Ok(Frames {
                reader,
                legacy: None,
                ended: false,
            });
        }
        // The earlier format: one postcard value, bounded by the old transport's limit.
        let mut all = head[..got].to_vec();
        reader.read_to_end(&mut all)?;
        Ok(Frames {
            reader,
            legacy: Some(all),
            ended: true,
        })
    }

    /// The whole content of a snapshot in the earlier format.
    pub(crate) fn legacy(&mut self) -> Option<Vec<u8>> {
        self.legacy.take()
    }

    fn field(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.reader
            .read_exact(&mut len)
            .map_err(|_| malformed("truncated"))?;
        let len = u32::from_be_bytes(len);
        if len > FIELD_BYTES_MAX {
            return Err(malformed("field too long"));
        }
        let mut buf = vec![0; len as usize];
        self.reader
            .read_exact(&mut buf)
            .map_err(|_| malformed("truncated"))?;
        Ok(buf)
    }

    /// The next frame; `None` after the end marker. Anything after it is refused.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.ended {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.reader
            .read_exact(&mut tag)
            .map_err(|_| malformed("no end marker"))?;
        match tag[0] {
            TABLE => {
                let name = String::from_utf8(self.field()?)
                    .map_err(|_| malformed("table name is not UTF-8"))?;
                Ok(Some(Frame::Table(name)))
            }
            ENTRY => {
                let key = self.field()?;
                let value = self.field()?;
                Ok(Some(Frame::Entry(key, value)))
            }
            END => {
                self.ended = true;
                let mut rest = [0u8; 1];
                if self.reader.read(&mut rest)? != 0 {
                    return Err(malformed("data after the end marker"));
                }
                Ok(None)
            }
            _ => Err(malformed("unknown frame")),
        }
    }
}

/// `file` as a snapshot file of `dir`: itself when it lives there (a received
/// snapshot is staged there), else a copy made there, so the recorded current snapshot
/// always names a file of this store.
pub(crate) fn adopt(dir: &Path, file: SnapshotFile) -> io::Result<SnapshotFile> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(there) = std::fs::metadata(dir.join(&file.name)) {
        let own = file.file.metadata()?;
        if there.dev() == own.dev() && there.ino() == own.ino() {
            return Ok(file);
        }
    }
    let mut staged = StagedFile::create(dir)?;
    while staged.len() < file.bytes {
        let chunk = file.read_chunk(staged.len(), BUFFER_BYTES)?;
        if chunk.is_empty() {
            return Err(malformed("shorter than recorded"));
        }
        staged.write_all(&chunk)?;
    }
    let copy = staged.publish()?;
    if copy.sha256 != file.sha256 {
        return Err(malformed("the copy does not match the recorded SHA-256"));
    }
    Ok(copy)
}

/// Removes every snapshot file in `dir` but the one named `keep` (snapshots a newer one
/// replaced; one being sent stays readable through its open handle) and, with
/// `staged`, the staged files of an interrupted write or receive (only when none can
/// be in progress: at start-up).
pub(crate) fn remove_all_but(dir: &Path, keep: Option<&str>, staged: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (staged && name.starts_with(STAGED_PREFIX)) || name.starts_with(SNAPSHOT_PREFIX);
        if ours && Some(name.as_ref()) != keep {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The file format round-trips, refuses truncation and trailing data, and a staged
    //! file that is dropped leaves nothing behind.

    use super::*;

    /// A table's name and entries, as test input.
    type TestTable<'a> = (&'a str, &'a [(&'a [u8], &'a [u8])]);

    fn write(dir: &Path, tables: &[TestTable]) -> SnapshotFile {
        let mut w = SnapshotWriter::create(dir).unwrap();
        for (name, entries) in tables {
            w.table(name).unwrap();
            for (k, v) in *entries {
                w.entry(k, v).unwrap();
            }
        }
        w.finish().unwrap()
    }

    fn read_all(f: &SnapshotFile) -> io::Result<Vec<Frame>> {
        let mut frames = f.frames()?;
        let mut out = Vec::new();
        while let Some(frame) = frames.next_frame()? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip_and_the_hash_covers_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            &[("a", &[(b"k1", b"v1"), (b"", b"")]), ("b", &[])],
        );
        assert_eq!(
            read_all(&f).unwrap(),
            vec![
                Frame::Table("a".into()),
                Frame::Entry(b"k1".to_vec(), b"v1".to_vec()),
                Frame::Entry(vec![], vec![]),
                Frame::Table("b".into()),
            ]
        );
        let bytes = std::fs::read(dir.path().join(f.name())).unwrap();
        assert_eq!(bytes.len() as u64, f.len());
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), f.sha256());
        assert_eq!(f.read_chunk(3, 4).unwrap(), bytes[3..7].to_vec());
        assert_eq!(
            f.read_chunk(f.len() - 2, 100).unwrap(),
            bytes[bytes.len() - 2..].to_vec()
        );
        // Reopened from its record, it reads the same.
        let again = SnapshotFile::open(dir.path(), &f.record())
            .unwrap()
            .unwrap();
        assert_eq!(read_all(&again).unwrap().len(), 4);
    }

    #[test]
    fn truncated_or_extended_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), &[("a", &[(b"key", b"value")])]);
        let path = dir.path().join(f.name());
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 1, bytes.len() - 3, MAGIC.len() + 3] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let f = SnapshotFile::open(
                dir.path(),
                &SnapshotFileRecord {
                    bytes: cut as u64,
                    ..f.record()
                },
            )
            .unwrap()
            .unwrap();
            assert!(read_all(&f).is_err(), "cut at {cut} must be refused");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let f = SnapshotFile::open(
            dir.path(),
            &SnapshotFileRecord {
                bytes: longer.len() as u64,
                ..f.record()
            },
        )
        .unwrap()
        .unwrap();
        assert!(read_all(&f).is_err());
    }

    #[test]
    fn a_dropped_staged_file_leaves_nothing_and_cleanup_keeps_the_current() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = StagedFile::create(dir.path()).unwrap();
            s.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let old = write(dir.path(), &[]);
        let current = write(dir.path(), &[]);
        let _leftover = StagedFile::create(dir.path()).unwrap();
        remove_all_but(dir.path(), Some(current.name()), false).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "a staged file is kept while running"
        );
        remove_all_but(dir.path(), Some(current.name()), true).unwrap();
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![current.name().to_owned()]);
        // The replaced snapshot is still readable through its open handle.
        assert!(read_all(&old).unwrap().is_empty());
    }

    #[test]
    fn a_file_without_the_magic_is_the_earlier_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StagedFile::create(dir.path()).unwrap();
        s.write_all(b"\x01postcard").unwrap();
        let f = s.publish().unwrap();
        let mut frames = f.frames().unwrap();
        assert_eq!(frames.legacy(), Some(b"\x01postcard".to_vec()));
        assert_eq!(frames.next_frame().unwrap(), None);
    }
}
