//! The local dead-letter store: records the broker refused for a reason retrying cannot fix
//! (topic not authorized, message too large, invalid or missing topic), and authentic bodies the
//! ingress kept as unusable, kept inside the spool directory so they are not lost and do not
//! block the records behind them.
//!
//! One file per record, `dead-letter/<seq>.dl`, written crash-safely (temp file `<seq>.dl.tmp`,
//! fsync, rename, directory fsync) *before* the forwarder confirms the record in the spool, so a
//! record is always in one of the two. Layout, do not reorder (version 1):
//! `magic b"HBDEADL1" | u32 meta_len | meta (JSON) | payload` — the payload is the spool record
//! payload (`delivery::Delivery` encoding), so a record can be put back into the spool unchanged.
//!
//! Every file operation goes through a [`SpoolFs`] and the spool's crash-safe sequences
//! (`ensure_dir`, `publish_file`), never `std::fs`: one crash-safe replace for every durable
//! file, and the fault and power-cut models of `tests/spool_faults/` reach this store too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::spool::{self, RealFs, SpoolFs};

const MAGIC: &[u8; 8] = b"HBDEADL1";
const SUFFIX: &str = ".dl";
/// What a dead letter is written under before its rename (`<seq>.dl.tmp`).
const TMP_SUFFIX: &str = ".dl.tmp";

/// What is known about a dead-lettered record, stored as JSON beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Spool sequence number the record had.
    pub seq: u64,
    /// Delivery id.
    pub id: String,
    /// `metadata.action`.
    pub action: String,
    /// Where it was being published.
    pub destination: String,
    /// Short reason code (the metric label), e.g. `topic_authorization_failed`.
    pub reason: String,
    /// The broker's or client's error text.
    pub error: String,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_lettered_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the store failed (create, write, fsync, rename, list, read, unlink).
    #[error("dead-letter store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file in the store does not have our layout.
    #[error("dead-letter file {0} is not readable as a dead letter")]
    Corrupt(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

pub struct DeadLetters {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    count: AtomicU64,
}

impl DeadLetters {
    /// Opens (creating if needed) the store under `spool_dir`. Blocking.
    pub fn open(spool_dir: &Path) -> Result<DeadLetters, Error> {
        DeadLetters::open_with_fs(spool_dir, Arc::new(RealFs))
    }

    /// [`DeadLetters::open`] on a given filesystem: the one the spool beside it uses (tests and
    /// fault injection pass theirs). Creates the directory durably (every created directory's
    /// parent is fsync'd) and deletes temporary files a crash left mid-`put` (never renamed into
    /// place, so never a dead letter). Call it only while holding the spool's lock: it is the
    /// writer's view of the store.
    pub fn open_with_fs(spool_dir: &Path, fs: Arc<dyn SpoolFs>) -> Result<DeadLetters, Error> {
        let dir = spool_dir.join(crate::spool::DEAD_LETTER_DIR);
        spool::ensure_dir(fs.as_ref(), &dir).map_err(io_err(&dir))?;
        for e in spool::list_dir(fs.as_ref(), &dir).map_err(io_err(&dir))? {
            if e.is_file && e.name.ends_with(TMP_SUFFIX) {
                spool::remove_file(fs.as_ref(), &e.path).map_err(io_err(&e.path))?;
            }
        }
        DeadLetters::counted(fs, dir)
    }

    /// Opens the store read-only-safely: `None` if `spool_dir` has none yet. Creates nothing, so
    /// the operator tools can use it next to a running bridge.
    pub fn open_existing(spool_dir: &Path) -> Result<Option<DeadLetters>, Error> {
        DeadLetters::open_existing_with_fs(spool_dir, Arc::new(RealFs))
    }

    /// [`DeadLetters::open_existing`] on a given filesystem.
    pub fn open_existing_with_fs(
        spool_dir: &Path,
        fs: Arc<dyn SpoolFs>,
    ) -> Result<Option<DeadLetters>, Error> {
        let dir = spool_dir.join(crate::spool::DEAD_LETTER_DIR);
        if !fs.is_dir(&dir) {
            return Ok(None);
        }
        DeadLetters::counted(fs, dir).map(Some)
    }

    fn counted(fs: Arc<dyn SpoolFs>, dir: PathBuf) -> Result<DeadLetters, Error> {
        let store = DeadLetters {
            fs,
            dir,
            count: AtomicU64::new(0),
        };
        let n = store.files()?.len() as u64;
        store.count.store(n, Ordering::Relaxed);
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records in the store.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores one record durably: `Ok` only once the file and its directory entry are fsync'd.
    /// On an error the record may or may not be visible (complete, never partial); putting it
    /// again is the way to make sure. Blocking (fsyncs); call from a blocking context.
    pub fn put(&self, meta: &Meta, payload: &[u8]) -> Result<(), Error> {
        let name = file_name(meta.seq);
        let path = self.dir.join(&name);
        let meta_json = serde_json::to_vec(meta).expect("meta serializes");
        let mut buf = Vec::with_capacity(12 + meta_json.len() + payload.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        buf.extend_from_slice(&meta_json);
        buf.extend_from_slice(payload);
        let existed = self.fs.exists(&path);
        let tmp_name = format!("{:020}{TMP_SUFFIX}", meta.seq);
        let result = spool::publish_file(self.fs.as_ref(), &self.dir, &tmp_name, &name, &buf);
        // Counted once it is visible, even if the directory fsync after the rename failed (the
        // retry then finds it existing).
        if !existed && self.fs.exists(&path) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        result.map(drop).map_err(io_err(&path))
    }

    /// Every stored record's metadata, oldest seq first. Corrupt files are reported as errors.
    pub fn list(&self) -> Result<Vec<Result<Meta, Error>>, Error> {
        Ok(self
            .files()?
            .into_iter()
            .map(|p| self.read(&p).map(|r| r.map(|(m, _)| m)))
            .filter_map(Result::transpose)
            .collect())
    }

    /// One record's metadata and payload.
    pub fn get(&self, seq: u64) -> Result<Option<(Meta, Bytes)>, Error> {
        self.read(&self.dir.join(file_name(seq)))
    }

    /// Removes one record (after it was put back into the spool), durably. Blocking.
    pub fn remove(&self, seq: u64) -> Result<bool, Error> {
        let path = self.dir.join(file_name(seq));
        match self.fs.remove_file(&path) {
            Ok(()) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>, Error> {
        let mut out: Vec<PathBuf> = spool::list_dir(self.fs.as_ref(), &self.dir)
            .map_err(io_err(&self.dir))?
            .into_iter()
            .filter(|e| e.is_file && e.name.ends_with(SUFFIX))
            .map(|e| e.path)
            .collect();
        out.sort();
        Ok(out)
    }

    /// `Ok(None)` if the file is not there (removed since it was listed).
    fn read(&self, path: &Path) -> Result<Option<(Meta, Bytes)>, Error> {
        let Some(buf) = spool::read_small(self.fs.as_ref(), path).map_err(io_err(path))? else {
            return Ok(None);
        };
        let corrupt = || Error::Corrupt(path.to_owned());
        if buf.len() < 12 || &buf[..8] != MAGIC {
            return Err(corrupt());
        }
        let len = u32::from_le_bytes(buf[8..12].try_into().unwrap()) as usize;
        let meta_end = 12usize
            .checked_add(len)
            .filter(|e| *e <= buf.len())
            .ok_or_else(corrupt)?;
        let meta: Meta = serde_json::from_slice(&buf[12..meta_end]).map_err(|_| corrupt())?;
        let payload = Bytes::from(buf).slice(meta_end..);
        Ok(Some((meta, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64) -> Meta {
        Meta {
            seq,
            id: format!("msg_{seq}"),
            action: "session.updated".into(),
            destination: "sb.session.updated".into(),
            reason: "message_too_large".into(),
            error: "Broker: Message size too large".into(),
            dead_lettered_at_ms: 1,
        }
    }

    #[test]
    fn put_list_get_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::open(dir.path()).unwrap();
        assert!(dl.is_empty());
        dl.put(&meta(7), b"payload-7").unwrap();
        dl.put(&meta(3), b"payload-3").unwrap();
        dl.put(&meta(7), b"payload-7").unwrap(); // idempotent
        assert_eq!(dl.len(), 2);
        let listed: Vec<u64> = dl
            .list()
            .unwrap()
            .into_iter()
            .map(|m| m.unwrap().seq)
            .collect();
        assert_eq!(listed, vec![3, 7]);
        let (m, p) = dl.get(7).unwrap().unwrap();
        assert_eq!(m, meta(7));
        assert_eq!(&p[..], b"payload-7");
        drop(dl);
        let dl = DeadLetters::open(dir.path()).unwrap();
        assert_eq!(dl.len(), 2);
        assert!(dl.remove(3).unwrap());
        assert!(!dl.remove(3).unwrap());
        assert_eq!(dl.len(), 1);
        assert!(dl.get(3).unwrap().is_none());
    }

    #[test]
    fn corrupt_file_is_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::open(dir.path()).unwrap();
        std::fs::write(dl.dir().join(format!("{:020}.dl", 5)), b"garbage").unwrap();
        let listed = dl.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(matches!(listed[0], Err(Error::Corrupt(_))));
    }

    #[test]
    fn open_deletes_a_put_interrupted_before_its_rename() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::open(dir.path()).unwrap();
        dl.put(&meta(1), b"one").unwrap();
        let tmp = dl.dir().join(format!("{:020}.dl.tmp", 2));
        std::fs::write(&tmp, b"half a dead le").unwrap();
        assert_eq!(
            dl.list().unwrap().len(),
            1,
            "a tmp file is not a dead letter"
        );
        drop(dl);
        let dl = DeadLetters::open(dir.path()).unwrap();
        assert_eq!(dl.len(), 1);
        assert!(!tmp.exists());
        // The read-only view leaves whatever it finds.
        std::fs::write(&tmp, b"x").unwrap();
        let ro = DeadLetters::open_existing(dir.path()).unwrap().unwrap();
        assert_eq!(ro.len(), 1);
        assert!(tmp.exists());
    }
}
