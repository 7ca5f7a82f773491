//! The spool's only door to the filesystem.
//!
//! Every open, read, write, fsync, rename, unlink, directory listing and free-space query the spool
//! performs goes through a [`SpoolFs`], so that tests can swap the real filesystem for one that
//! injects errors or simulates a power cut (see "The fault model" below). The trait holds only
//! primitive operations; the crash-safe sequences built from them (`publish_file`, `ensure_dir`,
//! `move_aside`) live here as functions over `&dyn SpoolFs`, so a simulated filesystem exercises
//! the very same ordering of writes, fsyncs and renames as production. Nothing here does policy,
//! logging or metrics. The dead-letter store beside the spool (`crate::deadletter`) uses the same
//! trait and sequences for its files.
//!
//! Cost in production: one virtual call in front of each syscall, which is noise next to the
//! syscall itself (and the fsync that follows every group commit).
//!
//! # The fault model
//!
//! The tests (`tests/spool_faults/`) use two: a wrapper over the real filesystem that fails the Nth
//! write, fsync, create, rename or directory fsync with EIO or ENOSPC, or reports low free space;
//! and an in-memory power-cut model. That model assumes exactly what the ordering rules of the
//! spool's module docs rely on, and nothing more: file bytes are durable once a
//! `sync_data`/`sync_all` on the file completed; a create, rename or unlink once a fsync of its
//! directory completed; at a cut everything else reverts (directory entries to their last synced
//! set; file contents to their last synced bytes, except that some prefix of unsynced appended
//! bytes may survive, its end possibly garbage or zeros — a torn page — and that unsynced
//! overwrites of synced bytes, such as frames written into preallocated zeros, survive page by
//! page: whole, not at all, or torn). It does not model lying disks (a completed fsync that is not
//! durable) or corruption of synced data; the corruption tests and recovery's CRC checks cover the
//! latter.

use std::any::Any;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the subdirectory that receives files recovery refuses to use but must not delete.
pub(crate) const DAMAGED_DIR: &str = "damaged";
/// Subdirectory owned by the dead-letter store (`crate::deadletter`); recovery leaves it alone.
pub const DEAD_LETTER_DIR: &str = "dead-letter";

/// The filesystem operations the spool uses. [`RealFs`] is the one production uses; other
/// implementations exist for tests and fault injection (`Spool::open_with_fs`).
///
/// Semantics follow POSIX: a write is durable only after a completed `sync_data`/`sync_all` on
/// the file; a create, rename or unlink only after a completed `sync_dir` on its directory.
pub trait SpoolFs: Send + Sync + 'static {
    /// Opens an existing file read-only.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading and writing (no create, no truncate).
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens `path` for reading and writing, creating it or truncating it to zero length.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Takes an exclusive lock on the spool directory `dir`. `Ok(None)` when someone else holds
    /// it. The lock must not outlive the process (a crash never leaves a stale one).
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>>;
    /// fsync on a directory: makes entries created, renamed or removed in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` exists and is a directory (false on any error).
    fn is_dir(&self, path: &Path) -> bool;
    /// Whether anything exists at `path` (false on any error).
    fn exists(&self, path: &Path) -> bool;
    /// Creates one directory (the parent must exist). Not durable until the parent is synced.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` by `from`. Not durable until the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks a file (`NotFound` if absent). Not durable until the directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The entries of `dir`. Names that are not UTF-8 cannot be ours and are skipped.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Bytes available to an unprivileged writer on the filesystem holding `path` (statvfs
    /// `f_bavail * f_frsize`).
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// A [`SpoolFs`] built on another one: every operation goes to [`inner`](Self::inner) unless the
/// implementation overrides it. Test doubles and fault injection implement this and override
/// only the operations they change; the blanket impl below makes each of them a `SpoolFs`.
pub trait DelegatingFs: Send + Sync + 'static {
    /// The filesystem the operations not overridden go to.
    fn inner(&self) -> &dyn SpoolFs;

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.inner().open_read(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.inner().open_write(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.inner().create(path)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        self.inner().lock_dir(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner().sync_dir(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner().is_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner().exists(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner().create_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner().rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner().remove_file(path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner().list_dir(dir)
    }
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        self.inner().free_bytes(path)
    }
}

impl<T: DelegatingFs> SpoolFs for T {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        DelegatingFs::open_read(self, path)
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        DelegatingFs::open_write(self, path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        DelegatingFs::create(self, path)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        DelegatingFs::lock_dir(self, dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        DelegatingFs::sync_dir(self, dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        DelegatingFs::is_dir(self, path)
    }
    fn exists(&self, path: &Path) -> bool {
        DelegatingFs::exists(self, path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        DelegatingFs::create_dir(self, path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        DelegatingFs::rename(self, from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        DelegatingFs::remove_file(self, path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        DelegatingFs::list_dir(self, dir)
    }
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        DelegatingFs::free_bytes(self, path)
    }
}

/// An open file. Reads and writes are positional, so no shared cursor can drift between the
/// writer's idea of the end of a segment and the file's.
// An `is_empty` would be one more method for every implementation to get right, for no caller.
#[allow(clippy::len_without_is_empty)]
pub trait FsFile: Send + Sync + std::fmt::Debug {
    /// Current file length.
    fn len(&self) -> io::Result<u64>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: data plus the metadata needed to read it back (the file size), not mtime.
    fn sync_data(&self) -> io::Result<()>;
    /// fsync: data and all metadata.
    fn sync_all(&self) -> io::Result<()>;
    /// Sets the file length (not durable until synced).
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// An open spool file (segment).
pub(crate) type SpoolFile = Box<dyn FsFile>;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_file: bool,
    /// File length (0 for directories).
    pub len: u64,
}

/// Holds the lock on a spool directory until dropped.
pub struct DirLock {
    _guard: Box<dyn Any + Send + Sync>,
}

impl DirLock {
    /// Wraps whatever keeps the lock held (released when it is dropped).
    pub fn new(guard: impl Any + Send + Sync) -> DirLock {
        DirLock {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for DirLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirLock")
    }
}

/// The real filesystem (std + flock + statvfs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl FsFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl SpoolFs for RealFs {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(
            OpenOptions::new().read(true).write(true).open(path)?,
        )))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?,
        )))
    }

    /// An exclusive flock on `dir/LOCK`: `Ok(None)` when another open file description holds it
    /// (another process, or another `Spool` in this one). flock locks die with the process.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DirLock::new(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let meta = entry.metadata()?;
            out.push(DirEntry {
                name,
                is_file: meta.is_file(),
                len: meta.len(),
            });
        }
        Ok(out)
    }

    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to writable memory
        // of the right type; statvfs only writes into it and we read it only on success.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled the struct.
        let st = unsafe { st.assume_init() };
        // f_bavail (not f_bfree): blocks reserved for root are not ours to use.
        #[allow(clippy::unnecessary_cast)] // the field widths differ between libc targets
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// Writes `len` zero bytes at `offset` (not durable until synced), a block at a time from one
/// static buffer, so preallocating costs no heap.
pub(crate) fn write_zeros(file: &dyn FsFile, offset: u64, len: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Cuts the file to `len` bytes and makes the new size durable.
pub(crate) fn truncate(file: &dyn FsFile, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_all()
}

/// Creates `dir` (and missing parents) if needed, fsyncing the parent of every directory it
/// creates: otherwise a power cut could lose a directory entry and everything beneath it.
pub(crate) fn ensure_dir(fs: &dyn SpoolFs, dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !fs.is_dir(d))
        .collect();
    for created in missing.iter().rev() {
        match fs.create_dir(created) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Atomically and durably puts `contents` at `dir/name`: write `dir/tmp_name`, fsync it, rename
/// it over `name`, fsync `dir`. After a crash at any point `name` is either absent (or its old
/// version) or complete; never partial. Returns the open handle to the new file.
pub(crate) fn publish_file(
    fs: &dyn SpoolFs,
    dir: &Path,
    tmp_name: &str,
    name: &str,
    contents: &[u8],
) -> io::Result<SpoolFile> {
    publish_file_with(fs, dir, tmp_name, name, |file| {
        file.write_all_at(contents, 0)
    })
}

/// [`publish_file`] for contents too large to build in memory first: `write` fills the new file
/// (positional writes from offset 0) before it is fsync'd and renamed into place.
pub(crate) fn publish_file_with(
    fs: &dyn SpoolFs,
    dir: &Path,
    tmp_name: &str,
    name: &str,
    write: impl FnOnce(&dyn FsFile) -> io::Result<()>,
) -> io::Result<SpoolFile> {
    let tmp = dir.join(tmp_name);
    let file = fs.create(&tmp)?;
    write(file.as_ref())?;
    // The data must be on disk before the rename can be: otherwise the rename may reach the disk
    // first and a power cut leaves `name` pointing at an empty or partial file.
    file.sync_all()?;
    fs.rename(&tmp, &dir.join(name))?;
    fs.sync_dir(dir)?;
    Ok(file)
}

/// Reads a small file whole; `Ok(None)` if it does not exist.
pub(crate) fn read_small(fs: &dyn SpoolFs, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match fs.open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; file.len()? as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// One entry of the spool directory, with its full path.
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_file: bool,
    pub len: u64,
}

/// Lists `dir`.
pub(crate) fn list_dir(fs: &dyn SpoolFs, dir: &Path) -> io::Result<Vec<Entry>> {
    Ok(fs
        .list_dir(dir)?
        .into_iter()
        .map(|e| Entry {
            path: dir.join(&e.name),
            name: e.name,
            is_file: e.is_file,
            len: e.len,
        })
        .collect())
}

/// Removes a file; a file that is already gone counts as removed. Not durable until the
/// directory is fsync'd.
pub(crate) fn remove_file(fs: &dyn SpoolFs, path: &Path) -> io::Result<()> {
    match fs.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Durably moves `path` (a file in `dir`) into `dir/damaged/`, never overwriting an earlier
/// casualty of the same name. Returns the new path.
pub(crate) fn move_aside(fs: &dyn SpoolFs, dir: &Path, path: &Path) -> io::Result<PathBuf> {
    let damaged = dir.join(DAMAGED_DIR);
    if !fs.is_dir(&damaged) {
        fs.create_dir(&damaged)?;
        fs.sync_dir(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = damaged.join(&name);
    let mut n = 1;
    while fs.exists(&target) {
        target = damaged.join(format!("{name}.{n}"));
        n += 1;
    }
    fs.rename(path, &target)?;
    fs.sync_dir(&damaged)?;
    fs.sync_dir(dir)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_reports_free_space_and_errors_on_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RealFs.free_bytes(dir.path()).unwrap() > 0);
        let err = RealFs.free_bytes(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn publish_file_replaces_atomically_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        publish_file(&RealFs, dir.path(), "x.tmp", "x", b"one").unwrap();
        let f = publish_file(&RealFs, dir.path(), "x.tmp", "x", b"two!").unwrap();
        assert_eq!(f.len().unwrap(), 4);
        assert_eq!(
            read_small(&RealFs, &dir.path().join("x")).unwrap(),
            Some(b"two!".to_vec())
        );
        let names: Vec<String> = RealFs
            .list_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["x".to_owned()]);
        assert_eq!(read_small(&RealFs, &dir.path().join("y")).unwrap(), None);
    }
}
