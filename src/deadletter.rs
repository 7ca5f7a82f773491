//! The local dead-letter store: records the broker refused for a reason retrying cannot fix
//! (topic not authorized, message too large, invalid or missing topic), kept inside the spool
//! directory so they are not lost and do not block the records behind them.
//!
//! One file per record, `dead-letter/<seq>.dl`, written crash-safely (temp file, fsync, rename,
//! directory fsync) *before* the forwarder confirms the record in the spool, so a record is
//! always in one of the two. Layout, do not reorder (version 1):
//! `magic b"HBDEADL1" | u32 meta_len | meta (JSON) | payload` — the payload is the spool record
//! payload (`delivery::Delivery` encoding), so a record can be put back into the spool unchanged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"HBDEADL1";
const SUFFIX: &str = ".dl";

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

pub struct DeadLetters {
    dir: PathBuf,
    count: AtomicU64,
}

impl DeadLetters {
    /// Opens (creating if needed) the store under `spool_dir`. Blocking.
    pub fn open(spool_dir: &Path) -> Result<DeadLetters, Error> {
        let dir = spool_dir.join(crate::spool::DEAD_LETTER_DIR);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            sync_dir(spool_dir).map_err(io_err(spool_dir))?;
        }
        let store = DeadLetters {
            dir,
            count: AtomicU64::new(0),
        };
        let n = store.files()?.len() as u64;
        store.count.store(n, Ordering::Relaxed);
        Ok(store)
    }

    /// Opens the store read-only-safely: `None` if `spool_dir` has none yet. Creates nothing, so
    /// the operator tools can use it next to a running bridge.
    pub fn open_existing(spool_dir: &Path) -> Result<Option<DeadLetters>, Error> {
        let dir = spool_dir.join(crate::spool::DEAD_LETTER_DIR);
        if !dir.is_dir() {
            return Ok(None);
        }
        let store = DeadLetters {
            dir,
            count: AtomicU64::new(0),
        };
        let n = store.files()?.len() as u64;
        store.count.store(n, Ordering::Relaxed);
        Ok(Some(store))
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

    /// Stores one record durably. Blocking (fsyncs); call from a blocking context.
    pub fn put(&self, meta: &Meta, payload: &[u8]) -> Result<(), Error> {
        let name = format!("{:020}{SUFFIX}", meta.seq);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let meta_json = serde_json::to_vec(meta).expect("meta serializes");
        let mut buf = Vec::with_capacity(12 + meta_json.len() + payload.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        buf.extend_from_slice(&meta_json);
        buf.extend_from_slice(payload);
        let existed = path.exists();
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(&buf).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        if !existed {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Every stored record's metadata, oldest seq first. Corrupt files are reported as errors.
    pub fn list(&self) -> Result<Vec<Result<Meta, Error>>, Error> {
        Ok(self
            .files()?
            .into_iter()
            .map(|p| read(&p).map(|(m, _)| m))
            .collect())
    }

    /// One record's metadata and payload.
    pub fn get(&self, seq: u64) -> Result<Option<(Meta, Bytes)>, Error> {
        let path = self.dir.join(format!("{seq:020}{SUFFIX}"));
        if !path.exists() {
            return Ok(None);
        }
        read(&path).map(Some)
    }

    /// Removes one record (after it was put back into the spool). Blocking.
    pub fn remove(&self, seq: u64) -> Result<bool, Error> {
        let path = self.dir.join(format!("{seq:020}{SUFFIX}"));
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir).map_err(io_err(&self.dir))?;
                self.count.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>, Error> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == &SUFFIX[1..]) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn read(path: &Path) -> Result<(Meta, Bytes), Error> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err(path))?;
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
    Ok((meta, payload))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
}
