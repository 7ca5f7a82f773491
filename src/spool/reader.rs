//! Sequential reader over committed records.
//!
//! A [`Reader`] starts at the first record above the confirmed position (as of
//! [`Spool::reader`](super::Spool::reader)), using a sparse in-memory index of (seq, offset, time)
//! checkpoints, at most one per second per segment, to avoid rescanning segments. It reads with its
//! own file handles and never beyond the commit point the writer publishes after each fsync, so it
//! cannot observe a partially written batch. It skips corrupt records with the same resync rules.
//! Reads are small positional reads done inline (the data is normally still in the page cache),
//! which keeps `next_batch` cancel-safe.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::scan::{SegmentCursor, Step};
use super::state::{lock, CommitPoint, Shared};
use super::{Error, StoredRecord};

/// Read size: large enough to amortise syscalls over many small records, small enough that a
/// reader far behind does not hold much memory.
const READ_CHUNK: usize = 256 << 10;

/// Sequential reader over committed records.
///
/// It reads the segment files through its own handles (recently written data comes from the page
/// cache) and never past the writer's published commit point, so it cannot see a batch whose
/// fsync has not returned. Segments deleted behind it (or under it: an open handle keeps a
/// deleted file readable) do not disturb it. `next_batch` is cancel-safe: dropping its future
/// loses nothing.
pub struct Reader {
    shared: Arc<Shared>,
    commit: watch::Receiver<CommitPoint>,
    /// Smallest seq still to be returned.
    want: u64,
    seg: Option<OpenSegment>,
    /// Base of the last segment the reader finished (or found deleted).
    done_base: Option<u64>,
}

struct OpenSegment {
    base: u64,
    cursor: SegmentCursor,
    /// Length once the segment is known to be sealed (a newer segment holds the commit point).
    sealed_len: Option<u64>,
    known_corrupt: Vec<u64>,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>) -> Reader {
        let commit = shared.commit.subscribe();
        let want = shared.confirmed() + 1;
        Reader {
            shared,
            commit,
            want,
            seg: None,
            done_base: None,
        }
    }

    /// Up to `max` committed records after the last one returned; waits until at least one exists.
    /// Returns `Err(Error::Closed)` once the spool is closed and everything committed was read.
    ///
    /// Returns as many records as are committed, up to `max`, in seq order (crossing segment
    /// boundaries); `max == 0` returns an empty batch at once. Corrupt records are skipped (and
    /// counted in `spool_corrupt_records` unless recovery already did). An I/O error is returned
    /// as `Error::Io` without losing the position: the next call retries the same read.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, Error> {
        self.next_batch_within(max, u64::MAX).await
    }

    /// Like [`Reader::next_batch`], and stops once the batch's payloads reach `max_bytes`: the
    /// record that reaches it is the last one returned, so a batch is never more than one record
    /// over (and a single record larger than `max_bytes` still comes back on its own).
    pub async fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<StoredRecord>, Error> {
        if max == 0 || max_bytes == 0 {
            return Ok(Vec::new());
        }
        loop {
            let commit = *self.commit.borrow_and_update();
            let batch = self.read_committed(&commit, max, max_bytes)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if commit.closed {
                return Err(Error::Closed);
            }
            // The sender lives in `Shared`, which this reader keeps alive: `changed` only
            // returns once a new commit point is published.
            if self.commit.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Reads what is committed, without waiting.
    fn read_committed(
        &mut self,
        commit: &CommitPoint,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<StoredRecord>, Error> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while out.len() < max && bytes < max_bytes {
            let before = out.len();
            match self.step(commit, &mut out) {
                Ok(true) => {
                    if out.len() > before {
                        bytes += out[before].payload.len() as u64;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    self.shared
                        .metrics
                        .spool_errors
                        .with_label_values(&["read"])
                        .inc();
                    tracing::error!(error = %e, want = self.want, "reading the spool failed");
                    // What was read so far is consistent with the position; the error repeats
                    // on the next call if it persists.
                    if out.is_empty() {
                        return Err(Error::Io(e));
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One scan step. `Ok(false)` when nothing more is committed.
    fn step(&mut self, commit: &CommitPoint, out: &mut Vec<StoredRecord>) -> io::Result<bool> {
        if self.seg.is_none() && !self.open_next(commit)? {
            return Ok(false);
        }
        let seg = self.seg.as_mut().expect("opened above");
        let limit = if seg.base == commit.segment {
            commit.end
        } else {
            // Older than the commit point's segment: sealed, every byte fsync'd.
            match seg.sealed_len {
                Some(len) => len,
                None => *seg.sealed_len.insert(seg.cursor.file().len()?),
            }
        };
        match seg.cursor.next(limit)? {
            Step::Record(f) => {
                if f.seq >= self.want {
                    let payload = Bytes::copy_from_slice(seg.cursor.payload(&f));
                    out.push(StoredRecord {
                        seq: f.seq,
                        appended_at_ms: f.appended_at_ms,
                        payload,
                    });
                    self.want = f.seq + 1;
                }
            }
            Step::Corrupt {
                offset,
                last_good,
                resumed,
            } => {
                if seg.known_corrupt.contains(&offset) {
                    tracing::debug!(
                        segment = seg.base,
                        offset,
                        "skipping corrupt region reported at recovery"
                    );
                } else {
                    let lost = Step::lost_records(last_good, resumed, None);
                    self.shared.metrics.spool_corrupt_records.inc_by(lost);
                    tracing::error!(
                        segment = seg.base,
                        offset,
                        last_good_seq = last_good,
                        lost,
                        "corrupt record(s) found while reading the spool; skipping them"
                    );
                }
            }
            Step::End if seg.base < commit.segment => {
                self.done_base = Some(seg.base);
                self.seg = None;
            }
            Step::End => return Ok(false),
        }
        Ok(true)
    }

    /// Opens the next segment to read: the one holding `want` at first, then each following
    /// one. `Ok(false)` if it does not exist or is not committed yet.
    fn open_next(&mut self, commit: &CommitPoint) -> io::Result<bool> {
        loop {
            let next = {
                let table = lock(&self.shared.segments);
                let i = match self.done_base {
                    None => table.index_for_seq(self.want),
                    Some(done) => table.index_after(done),
                };
                i.map(|i| {
                    let s = &table.segs[i];
                    let (offset, last_good) = s.scan_start_for(self.want.max(s.base));
                    (
                        s.base,
                        s.path.clone(),
                        offset,
                        last_good,
                        s.known_corrupt.clone(),
                    )
                })
            };
            let Some((base, path, offset, last_good, known_corrupt)) = next else {
                return Ok(false);
            };
            if base > commit.segment {
                // Created by a group commit that has not finished.
                return Ok(false);
            }
            match self.shared.fs.open_read(&path) {
                Ok(file) => {
                    let cursor = SegmentCursor::new(file, offset, last_good, READ_CHUNK);
                    self.seg = Some(OpenSegment {
                        base,
                        cursor,
                        sealed_len: None,
                        known_corrupt,
                    });
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Deleted since the table was read: it held only confirmed records.
                    self.done_base = Some(base);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
