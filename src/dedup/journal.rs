//! The journal: `<spool.dir>/dedup.journal`, how stored ids survive a restart.
//!
//! Stored ids survive a restart through a binary journal of fixed-size records. Do not reorder
//! or resize a field: a change is a new [`VERSION`] and a conversion in [`open`].
//!
//! | bytes | header (32 bytes)                          |
//! | ----- | ------------------------------------------ |
//! | 0..8  | magic `HBDEDUPJ`                           |
//! | 8..12 | format version, u32 LE (3)                 |
//! | 12..28| fingerprint key (16 random bytes)          |
//! | 28..32| CRC-32C of bytes 0..28, u32 LE             |
//!
//! | bytes | record (24 bytes), any number after the header                      |
//! | ----- | ------------------------------------------------------------------- |
//! | 0..4  | when it was stored: Unix seconds rounded up, u32 LE                   |
//! | 4..20 | fingerprint, u128 LE                                                |
//! | 20..24| CRC-32C of the key followed by bytes 0..20, u32 LE                  |
//!
//! Records are written by a thread of their own every 10 ms (never on the async runtime; no syscall
//! or wake-up per delivery), after the delivery's fsync and without one of their own: a power cut
//! loses at most the last few seconds of ids, which only means a retry of those is stored and
//! published twice — still within the at-least-once promise (and JetStream's own de-duplication
//! window). The file is fsync'd when it is opened and at a clean stop, so a cut loses only what was
//! journaled since the last start. A record is trusted only if it is whole and its CRC matches: a
//! torn tail (shorter than a record) is ignored and the next append overwrites it, a zeroed,
//! garbage or foreign record (the CRC covers the key) is skipped and the records after it still
//! count (they sit at fixed offsets), so a power cut can make the journal forget recent ids but
//! never invent one. Loading is big sequential reads and a CRC per record (tens of milliseconds for
//! a million ids). A text journal of hookbridge ≤ 0.1 (`<ms> <id> <crc32c>` lines, header
//! `# hookbridge dedup journal v2`, or no header and no CRC) is read once at start, its ids
//! fingerprinted with a new key, and rewritten in this format. A journal with this magic but
//! another version is refused before anything is changed; one whose header is damaged is forgotten
//! (a warning), which costs only duplicates.
//!
//! The journal is compacted (rewritten with only the live ids, through the spool's crash-safe
//! replace) at start when it is in an old format or holds more than twice the live ids, and by
//! its thread when it has grown to that.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::Clock;

use super::fingerprint::{Fingerprint, Key};
use super::lock;
use super::set::{live, secs_of, Remembered};
use crate::spool::fs::publish_file_with;
use crate::spool::{FsFile, SpoolFs};

pub const JOURNAL_FILE: &str = "dedup.journal";
pub(super) const JOURNAL_TMP_FILE: &str = "dedup.journal.tmp";
pub(super) const MAGIC: [u8; 8] = *b"HBDEDUPJ";
/// The journal format this version writes and reads (the text formats were 1 and 2).
pub(super) const VERSION: u32 = 3;
pub(super) const HEADER_LEN: usize = 32;
pub(super) const RECORD_LEN: usize = 24;
/// First line of a text journal whose lines carry a CRC (hookbridge ≤ 0.1).
pub(super) const V2_HEADER: &[u8] = b"# hookbridge dedup journal v2\n";
/// Longest id a text journal line may carry (the ingress accepts at most 256 characters).
pub(super) const MAX_ID_LEN: usize = 256;
/// Extra records tolerated beyond twice the live ids before the journal is compacted.
pub(super) const COMPACT_SLACK: usize = 10_000;
/// Records read or written at a time (768 KiB).
pub(super) const IO_RECORDS: usize = 1 << 15;
/// How often the journal thread writes the records committed since its last write. A crash
/// loses at most this much of the journal's tail (which the page cache would not have kept from
/// a power cut anyway): a retry of those ids is stored and published again, at-least-once.
pub(super) const JOURNAL_FLUSH: Duration = Duration::from_millis(10);

/// Records waiting for the journal thread, which writes them every [`JOURNAL_FLUSH`]: a commit
/// appends to a buffer instead of waking a thread or making a syscall per delivery.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) records: Vec<u8>,
    pub(super) count: usize,
    /// Set by [`Dedup::close`](super::Dedup::close) (or at open when there is no journal to
    /// write): the thread writes what is left and exits; later commits are remembered in memory
    /// only.
    pub(super) closed: bool,
}

/// The journal opened for appending (or not: then ids are remembered in memory only), and the
/// ids it held.
pub(super) struct Opened {
    pub(super) key: Key,
    pub(super) remembered: Remembered,
    pub(super) queue: Arc<Mutex<Queue>>,
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) bytes: Arc<AtomicU64>,
}

/// Opens the journal in `dir`, loads the ids still inside the window, and starts the thread that
/// appends to it. Blocking. Fails on an I/O error or a journal of an unknown format version
/// (which it leaves as it is).
pub(super) fn open(
    fs: Arc<dyn SpoolFs>,
    dir: &Path,
    window_ms: u64,
    max_entries: usize,
    clock: Clock,
) -> io::Result<Opened> {
    let now_ms = clock.wall_ms();
    let existing = match fs.open_write(&dir.join(JOURNAL_FILE)) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let JournalContents {
        key,
        mut remembered,
        records,
    } = match &existing {
        Some(file) => load(file.as_ref(), window_ms, max_entries, now_ms)?,
        None => JournalContents {
            key: Key::random(),
            remembered: Remembered::new(max_entries, 0),
            records: None,
        },
    };
    remembered.evict(now_ms, window_ms);
    let live = remembered.len();
    let bytes = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(Queue::default()));
    let thread = match reuse_or_rewrite(fs.as_ref(), dir, &key, &remembered, records, existing) {
        Some((file, records)) => {
            let len = (HEADER_LEN + records * RECORD_LEN) as u64;
            bytes.store(len, Ordering::Relaxed);
            let writer = JournalWriter {
                fs,
                dir: dir.to_owned(),
                file,
                len,
                records,
                live,
                window_ms,
                max_entries,
                clock,
                key: key.clone(),
                failing: false,
                bytes: bytes.clone(),
            };
            let queue = queue.clone();
            Some(
                std::thread::Builder::new()
                    .name("dedup-journal".into())
                    .spawn(move || writer.run(&queue))?,
            )
        }
        None => {
            lock(&queue).closed = true;
            None
        }
    };
    Ok(Opened {
        key,
        remembered,
        queue,
        thread,
        bytes,
    })
}

/// The file to append to and its record slots: the existing journal when it is in this format
/// without much dead weight, else a rewrite with the live ids (compaction or upgrade). `None`
/// when neither can be written.
fn reuse_or_rewrite(
    fs: &dyn SpoolFs,
    dir: &Path,
    key: &Key,
    remembered: &Remembered,
    records: Option<usize>,
    existing: Option<Box<dyn FsFile>>,
) -> Option<(Box<dyn FsFile>, usize)> {
    let live = remembered.len();
    // A journal in this format without much dead weight is appended to as it is: no
    // rewrite on the way to ready. It is fsync'd (mostly written back already), so what
    // the last run journaled survives a power cut now, as a rewrite would have made it.
    if let (Some(n), Some(file)) = (
        records.filter(|&n| n <= 2 * live + COMPACT_SLACK),
        &existing,
    ) {
        if let Err(e) = file.sync_data() {
            tracing::warn!(error = %e, "syncing the de-duplication journal failed");
        }
        return existing.map(|file| (file, n));
    }
    let compacted = publish_file_with(fs, dir, JOURNAL_TMP_FILE, JOURNAL_FILE, |f| {
        let mut out = RecordWriter::new(f, key);
        for (secs, fp) in remembered.live_entries() {
            out.record(secs, fp)?;
        }
        out.finish()
    });
    match (compacted, existing, records) {
        (Ok(f), _, _) => Some((f, live)),
        // Best effort: on a full disk the rewrite fails, and the bridge must still
        // start (it is what drains the spool and frees the space).
        (Err(e), Some(file), Some(n)) => {
            tracing::warn!(error = %e, "compacting the de-duplication journal failed; appending to it as it is");
            Some((file, n))
        }
        (Err(e), _, _) => {
            tracing::warn!(error = %e, "writing the de-duplication journal failed; ids stored from now on are remembered until the next restart only");
            None
        }
    }
}

/// What [`load`] found in an existing journal.
pub(super) struct JournalContents {
    key: Key,
    remembered: Remembered,
    /// Whole record slots, when the file is in the current format with an intact header and can
    /// be appended to; `None` when it must be rewritten.
    records: Option<usize>,
}

/// Reads a journal of any known format: the ids in it still inside the window, at most
/// `max_entries` of the newest.
pub(super) fn load(
    file: &dyn FsFile,
    window_ms: u64,
    max_entries: usize,
    now_ms: u64,
) -> io::Result<JournalContents> {
    let len = file.len()?;
    let mut head = [0u8; HEADER_LEN];
    let head = &mut head[..(len as usize).min(HEADER_LEN)];
    file.read_exact_at(head, 0)?;
    let keep = |r: &mut Remembered, secs: u32, fp: Fingerprint| {
        // `push` evicts the oldest beyond `max_entries`: memory stays bounded whatever the
        // file holds.
        if live(secs, window_ms, now_ms) {
            r.push(fp, secs);
        }
    };
    if !head.starts_with(&MAGIC) {
        // A text journal (hookbridge ≤ 0.1): its ids get fingerprints under a new key, and the
        // caller rewrites it in the current format.
        let key = Key::random();
        let mut remembered = Remembered::new(max_entries, 0);
        for_each_line(file, |ts, id| {
            keep(&mut remembered, secs_of(ts), key.fingerprint(id))
        })?;
        return Ok(JournalContents {
            key,
            remembered,
            records: None,
        });
    }
    let header = head.get(..HEADER_LEN).and_then(parse_header);
    let key = match header {
        Some((VERSION, key)) => Key::new(key),
        Some((version, _)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{JOURNAL_FILE} has format version {version}; this hookbridge reads version {VERSION} and the text versions before it"),
            ))
        }
        None => {
            tracing::warn!(
                "the de-duplication journal's header is damaged; starting without remembered ids"
            );
            return Ok(JournalContents {
                key: Key::random(),
                remembered: Remembered::new(max_entries, 0),
                records: None,
            });
        }
    };
    let slots = ((len - HEADER_LEN as u64) / RECORD_LEN as u64) as usize;
    let mut remembered = Remembered::new(max_entries, slots.min(max_entries));
    for_each_record(file, &key, |secs, fp| keep(&mut remembered, secs, fp))?;
    Ok(JournalContents {
        key,
        remembered,
        records: Some(slots),
    })
}

/// The version and key of a header whose magic and CRC are right.
pub(super) fn parse_header(h: &[u8]) -> Option<(u32, [u8; 16])> {
    let crc = u32::from_le_bytes(h[28..32].try_into().ok()?);
    if h[..8] != MAGIC || crc != crc32c::crc32c(&h[..28]) {
        return None;
    }
    let version = u32::from_le_bytes(h[8..12].try_into().ok()?);
    Some((version, h[12..28].try_into().ok()?))
}

pub(super) fn header(key: &Key) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..28].copy_from_slice(&key.bytes);
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(super) fn push_record(buf: &mut Vec<u8>, key: &Key, secs: u32, fp: Fingerprint) {
    let start = buf.len();
    buf.extend_from_slice(&secs.to_le_bytes());
    buf.extend_from_slice(&fp.to_u128().to_le_bytes());
    let crc = crc32c::crc32c_append(key.crc, &buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// A record, if it is one: anything whose CRC does not match (torn, zeroed, garbage, written
/// under another key) is skipped — trusting it could make an id look stored that was not.
pub(super) fn parse_record(r: &[u8], key: &Key) -> Option<(u32, Fingerprint)> {
    let (body, crc) = r.split_at(RECORD_LEN - 4);
    if u32::from_le_bytes(crc.try_into().ok()?) != crc32c::crc32c_append(key.crc, body) {
        return None;
    }
    let secs = u32::from_le_bytes(body[..4].try_into().ok()?);
    let fp = u128::from_le_bytes(body[4..20].try_into().ok()?);
    Some((secs, Fingerprint::from_u128(fp)))
}

/// Calls `f` for every valid record of a current-format journal, in big sequential reads. A
/// tail shorter than a record was torn by a crash and is not read.
pub(super) fn for_each_record(
    file: &dyn FsFile,
    key: &Key,
    mut f: impl FnMut(u32, Fingerprint),
) -> io::Result<()> {
    let len = file.len()?;
    let end = len - (len.saturating_sub(HEADER_LEN as u64) % RECORD_LEN as u64);
    let mut buf = vec![0u8; IO_RECORDS * RECORD_LEN];
    let mut offset = HEADER_LEN as u64;
    while offset < end {
        let n = (end - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        offset += n as u64;
        for r in buf[..n].chunks_exact(RECORD_LEN) {
            if let Some((secs, fp)) = parse_record(r, key) {
                f(secs, fp);
            }
        }
    }
    Ok(())
}

/// Buffered positional writes of a new journal: the header, then records.
pub(super) struct RecordWriter<'a> {
    file: &'a dyn FsFile,
    key: &'a Key,
    offset: u64,
    buf: Vec<u8>,
}

impl<'a> RecordWriter<'a> {
    fn new(file: &'a dyn FsFile, key: &'a Key) -> Self {
        let mut buf = Vec::with_capacity(IO_RECORDS * RECORD_LEN);
        buf.extend_from_slice(&header(key));
        RecordWriter {
            file,
            key,
            offset: 0,
            buf,
        }
    }

    fn record(&mut self, secs: u32, fp: Fingerprint) -> io::Result<()> {
        push_record(&mut self.buf, self.key, secs, fp);
        if self.buf.len() >= IO_RECORDS * RECORD_LEN {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.offset)?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is still buffered.
    fn finish(mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Owns the journal file; runs on its own thread.
pub(super) struct JournalWriter {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    file: Box<dyn FsFile>,
    /// Where the next record goes: the end of the last whole record (a torn tail after it is
    /// overwritten).
    len: u64,
    /// Record slots in the file.
    records: usize,
    /// Records the last compaction kept (or the live ids at open).
    live: usize,
    window_ms: u64,
    max_entries: usize,
    /// What compaction judges the window by: the de-duplication set's clock.
    clock: Clock,
    key: Key,
    /// A write failed and nothing has succeeded since (to warn once per failure streak).
    failing: bool,
    bytes: Arc<AtomicU64>,
}

impl JournalWriter {
    fn run(mut self, queue: &Mutex<Queue>) {
        let mut buf = Vec::new();
        loop {
            let (n, closed) = {
                let mut q = lock(queue);
                // Swapped, not copied: the two buffers take turns.
                std::mem::swap(&mut q.records, &mut buf);
                (std::mem::take(&mut q.count), q.closed)
            };
            if n > 0 {
                self.append(&buf, n);
                buf.clear();
            }
            if closed {
                // A clean stop leaves the whole journal durable.
                if let Err(e) = self.file.sync_data() {
                    tracing::warn!(error = %e, "syncing the de-duplication journal failed");
                }
                return;
            }
            std::thread::park_timeout(JOURNAL_FLUSH);
        }
    }

    /// Writes `n` records (`buf`) at the end of the journal; compacts it when it has grown.
    fn append(&mut self, buf: &[u8], n: usize) {
        match self.file.write_all_at(buf, self.len) {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.records += n;
                self.bytes.store(self.len, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    tracing::info!("writing the de-duplication journal works again");
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    // De-duplication across a restart degrades to the broker's; deliveries
                    // are unaffected.
                    tracing::warn!(error = %e, "writing the de-duplication journal failed");
                }
            }
        }
        if self.records > 2 * self.live + COMPACT_SLACK {
            if let Err(e) = self.compact(self.clock.wall_ms()) {
                tracing::warn!(error = %e, "compacting the de-duplication journal failed");
                // Try again after as many records again.
                self.live = self.records;
            }
        }
    }

    /// Rewrites the journal with the records still inside the window, at most `max_entries` of
    /// the newest: two passes over the file, so memory stays flat whatever its size.
    fn compact(&mut self, now_ms: u64) -> io::Result<()> {
        let window_ms = self.window_ms;
        let in_window = |secs: u32| live(secs, window_ms, now_ms);
        let mut count = 0usize;
        for_each_record(self.file.as_ref(), &self.key, |secs, _| {
            count += usize::from(in_window(secs))
        })?;
        let mut skip = count.saturating_sub(self.max_entries);
        let mut kept = 0;
        let old = self.file.as_ref();
        let key = &self.key;
        let new = publish_file_with(
            self.fs.as_ref(),
            &self.dir,
            JOURNAL_TMP_FILE,
            JOURNAL_FILE,
            |f| {
                let mut out = RecordWriter::new(f, key);
                let mut result = Ok(());
                for_each_record(old, key, |secs, fp| {
                    if !in_window(secs) || result.is_err() {
                        return;
                    }
                    if skip > 0 {
                        skip -= 1;
                        return;
                    }
                    kept += 1;
                    result = out.record(secs, fp);
                })?;
                result?;
                out.finish()
            },
        )?;
        self.file = new;
        self.len = (HEADER_LEN + kept * RECORD_LEN) as u64;
        self.records = kept;
        self.live = kept;
        self.bytes.store(self.len, Ordering::Relaxed);
        Ok(())
    }
}

/// A text journal line (hookbridge ≤ 0.1), if it is one: `<ms> <id> <crc>` with an id of
/// visible ASCII and a matching CRC-32C. Anything else (a torn, zero-filled or garbage line
/// after a power cut) is skipped: an id read from a damaged line could match a delivery that
/// was never stored. A text journal without the [`V2_HEADER`] was written by the first version,
/// whose lines have no CRC (`checked` false).
pub(super) fn parse_line(line: &[u8], checked: bool) -> Option<(u64, &str)> {
    let line = if checked {
        let (rest, crc) = line.split_at(line.len().checked_sub(9)?);
        let crc = std::str::from_utf8(crc.strip_prefix(b" ")?).ok()?;
        if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(rest) {
            return None;
        }
        rest
    } else {
        line
    };
    let space = line.iter().position(|&b| b == b' ')?;
    let (ts, id) = (&line[..space], &line[space + 1..]);
    if ts.is_empty() || !ts.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let ts = std::str::from_utf8(ts).ok()?.parse().ok()?;
    Some((ts, std::str::from_utf8(id).ok()?))
}

/// Calls `f` for every complete, well-formed line of a text journal. A last line without its
/// newline was torn by a crash and is skipped.
pub(super) fn for_each_line(file: &dyn FsFile, mut f: impl FnMut(u64, &str)) -> io::Result<()> {
    let len = file.len()?;
    let chunk_len = IO_RECORDS * RECORD_LEN;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; chunk_len];
    let mut offset = 0u64;
    let mut checked = None;
    while offset < len {
        let n = (len - offset).min(chunk_len as u64) as usize;
        file.read_exact_at(&mut chunk[..n], offset)?;
        offset += n as u64;
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + i + 1];
            start += i + 1;
            let checked = *checked.get_or_insert(line == V2_HEADER);
            if let Some((ts, id)) = parse_line(&line[..line.len() - 1], checked) {
                f(ts, id);
            }
        }
        pending.drain(..start);
    }
    Ok(())
}
