//! Replay protection: remembers delivery ids for `auth.dedup_window` so the sender's retries of
//! a delivery hookbridge already stored are acknowledged without being stored (and published)
//! again.
//!
//! # How it keeps invariant 1 (a 2xx means the delivery is on disk)
//!
//! An id is answered `duplicate` (a 2xx) only when a spool append carrying it has *returned
//! success*, i.e. after its group-commit fsync. The states of an id are:
//!
//! - **unknown**: [`Dedup::claim`] returns [`Claim::New`] with a [`ClaimGuard`]; the id is now
//!   *pending*.
//! - **pending**: the first attempt's append is in progress. Another request with the same id
//!   gets [`Claim::InProgress`] and waits for the outcome (the ingress bounds the wait by
//!   `auth.dedup_wait`, then answers 503 + `Retry-After`). It is never answered 2xx from here.
//! - **stored**: [`ClaimGuard::commit`] was called after the append returned `Ok`; later claims
//!   within the window are [`Claim::Duplicate`].
//!
//! A guard that is dropped without `commit` (the append failed, or the task was torn down)
//! returns the id to unknown, and a waiting retry then stores the delivery itself. The ingress
//! runs the append and the guard in a task of their own, so a request whose connection is closed
//! mid-append still records the append's real outcome.
//!
//! # Bounds and persistence
//!
//! At most `auth.dedup_max_entries` stored ids, the oldest forgotten first. Stored ids survive a
//! restart through a journal beside the spool (`<spool.dir>/dedup.journal`: a header line, then
//! one `<ms> <id> <crc32c>` line per stored delivery). Lines are written by a thread of their own every 10 ms (never on the
//! async runtime; no syscall or wake-up per delivery), after the delivery's fsync and without one of their own: a power cut loses at most
//! the last few seconds of ids, which only means a retry of those is stored and published twice —
//! still within the at-least-once promise (and JetStream's own de-duplication window). A line is
//! trusted only if it is complete and its CRC matches, so a torn or garbage line after a power
//! cut can never make an id that was not stored look stored. The journal is compacted (rewritten with only the live ids, through the
//! spool's crash-safe replace) at start and when it holds more than twice the live ids.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::spool::fs::publish_file_with;
use crate::spool::FsFile;
use crate::spool::SpoolFs;

pub const JOURNAL_FILE: &str = "dedup.journal";
const JOURNAL_TMP_FILE: &str = "dedup.journal.tmp";
/// First line of a journal whose lines carry a CRC (every journal this version writes).
const JOURNAL_HEADER: &[u8] = b"# hookbridge dedup journal v2\n";
/// Longest id a journal line may carry (the ingress accepts at most 256 characters).
const MAX_ID_LEN: usize = 256;
/// Extra lines tolerated beyond twice the live ids before the journal is compacted.
const COMPACT_SLACK: usize = 10_000;
/// Bytes read from the journal at a time.
const READ_CHUNK: usize = 1 << 20;
/// How often the journal thread writes the lines committed since its last write. A crash loses
/// at most this much of the journal's tail (which the page cache would not have kept from a
/// power cut anyway): a retry of those ids is stored and published again, at-least-once.
const JOURNAL_FLUSH: Duration = Duration::from_millis(10);

pub struct Dedup {
    window_ms: u64,
    max_entries: usize,
    state: Mutex<State>,
    journal: Arc<Mutex<Pending>>,
    journal_thread: Mutex<Option<JoinHandle<()>>>,
}

struct State {
    /// Stored id → when it was stored (ms).
    seen: HashMap<String, u64>,
    /// Insertion order of `seen`, for expiry and eviction. May hold stale entries (ids stored
    /// again later); those are skipped when popped.
    order: VecDeque<(u64, String)>,
    /// Ids whose first append is in progress. The sender lives in the [`ClaimGuard`]; waiters
    /// clone the receiver and wake when the guard is gone.
    pending: HashMap<String, watch::Receiver<()>>,
}

/// Journal lines waiting for the journal thread, which writes them every [`JOURNAL_FLUSH`]: a
/// commit appends to a buffer instead of waking a thread or making a syscall per delivery.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    count: usize,
    /// Set by [`Dedup::close`]: the thread writes what is left and exits; later commits are
    /// remembered in memory only.
    closed: bool,
}

/// What [`Dedup::claim`] found.
pub enum Claim {
    /// Not stored within the window, and nobody is storing it: go ahead and store it, then
    /// [`ClaimGuard::commit`] (dropping the guard instead releases the id).
    New(ClaimGuard),
    /// Stored within the window.
    Duplicate,
    /// Another request is storing it right now: wait for it ([`InProgress::wait`]), then claim
    /// again.
    InProgress(InProgress),
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Claim::New(_) => "New",
            Claim::Duplicate => "Duplicate",
            Claim::InProgress(_) => "InProgress",
        })
    }
}

/// The right to store an id. Held by whoever runs the append; released on drop unless
/// committed, so no path can leave an id pending forever.
pub struct ClaimGuard {
    dedup: Arc<Dedup>,
    id: String,
    committed: bool,
    /// Dropped last (after `Drop::drop` updated the state), which wakes the waiters.
    _done: watch::Sender<()>,
}

/// A concurrent attempt's outcome, to wait for.
pub struct InProgress(watch::Receiver<()>);

impl InProgress {
    /// Resolves once the attempt that holds the claim committed or gave it up.
    pub async fn wait(mut self) {
        // The sender never sends: it is dropped, which `changed` reports as an error.
        while self.0.changed().await.is_ok() {}
    }
}

impl ClaimGuard {
    /// The delivery's append returned success (it is fsync'd): remember it from `now_ms` on,
    /// and journal it.
    pub fn commit(mut self, now_ms: u64) {
        self.committed = true;
        let id = std::mem::take(&mut self.id);
        let mut s = self.dedup.lock();
        // The pending entry's key becomes the stored entry's key: one allocation, not three.
        let key = match s.pending.remove_entry(&id) {
            Some((key, _)) => key,
            None => id.clone(),
        };
        s.order.push_back((now_ms, id.clone()));
        s.seen.insert(key, now_ms);
        drop(s);
        let mut j = lock(&self.dedup.journal);
        if !j.closed {
            push_line(&mut j.lines, now_ms, &id);
            j.count += 1;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.committed {
            self.dedup.lock().pending.remove(&self.id);
        }
    }
}

impl Dedup {
    /// Opens the journal in `dir` and loads the ids still inside the window. Blocking.
    pub fn open(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        window: Duration,
        max_entries: usize,
        now_ms: u64,
    ) -> io::Result<Dedup> {
        let window_ms = window.as_millis() as u64;
        let path = dir.join(JOURNAL_FILE);
        let mut seen = HashMap::new();
        let mut order = VecDeque::new();
        let existing = match fs.open_write(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(file) = &existing {
            for_each_line(file.as_ref(), |ts, id| {
                if ts.saturating_add(window_ms) >= now_ms {
                    seen.insert(id.to_owned(), ts);
                    order.push_back((ts, id.to_owned()));
                }
            })?;
        }
        let mut state = State {
            seen,
            order,
            pending: HashMap::new(),
        };
        state.evict(now_ms, window_ms, max_entries);
        let live = state.seen.len();
        // Best effort: on a full disk the rewrite fails, and the bridge must still start (it is
        // what drains the spool and frees the space).
        let compacted = publish_file_with(fs.as_ref(), dir, JOURNAL_TMP_FILE, JOURNAL_FILE, |f| {
            let mut out = LineWriter::new(f);
            for (ts, id) in &state.order {
                if state.seen.get(id) == Some(ts) {
                    out.line(*ts, id)?;
                }
            }
            out.finish()
        });
        let (file, lines) = match (compacted, existing) {
            (Ok(f), _) => (f, live),
            (Err(e), existing) => {
                tracing::warn!(error = %e, "compacting the de-duplication journal failed; keeping it as it is");
                match existing {
                    Some(f) => (f, 2 * live + COMPACT_SLACK),
                    None => (fs.create(&path)?, 0),
                }
            }
        };
        let writer = JournalWriter {
            fs,
            dir: dir.to_owned(),
            len: file.len()?,
            file,
            lines,
            live,
            window_ms,
            max_entries,
            failing: false,
        };
        let journal = Arc::new(Mutex::new(Pending::default()));
        let queue = journal.clone();
        let thread = std::thread::Builder::new()
            .name("dedup-journal".into())
            .spawn(move || writer.run(&queue))?;
        Ok(Dedup {
            window_ms,
            max_entries,
            state: Mutex::new(state),
            journal,
            journal_thread: Mutex::new(Some(thread)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Ids currently remembered as stored.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids remembered as stored, oldest first.
    pub fn ids(&self) -> Vec<String> {
        let s = self.lock();
        s.order
            .iter()
            .filter(|(ts, id)| s.seen.get(id) == Some(ts))
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Ids whose first append is in progress.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Claims `id` for storing, unless it was stored within the window or is being stored.
    pub fn claim(self: &Arc<Self>, id: &str, now_ms: u64) -> Claim {
        let mut s = self.lock();
        s.evict(now_ms, self.window_ms, self.max_entries);
        if let Some(rx) = s.pending.get(id) {
            return Claim::InProgress(InProgress(rx.clone()));
        }
        if let Some(&ts) = s.seen.get(id) {
            if ts.saturating_add(self.window_ms) >= now_ms {
                return Claim::Duplicate;
            }
        }
        let (tx, rx) = watch::channel(());
        s.pending.insert(id.to_owned(), rx);
        Claim::New(ClaimGuard {
            dedup: self.clone(),
            id: id.to_owned(),
            committed: false,
            _done: tx,
        })
    }

    /// Writes what is queued for the journal and stops its thread. Blocking. Commits after this
    /// are remembered in memory only.
    pub fn close(&self) {
        lock(&self.journal).closed = true;
        let thread = lock(&self.journal_thread).take();
        if let Some(thread) = thread {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl State {
    fn evict(&mut self, now_ms: u64, window_ms: u64, max_entries: usize) {
        while let Some((ts, id)) = self.order.front() {
            let expired = ts.saturating_add(window_ms) < now_ms;
            let over = self.order.len() > max_entries;
            if !expired && !over {
                break;
            }
            let (ts, id) = (*ts, id.clone());
            self.order.pop_front();
            if self.seen.get(&id) == Some(&ts) {
                self.seen.remove(&id);
            }
        }
    }
}

/// Owns the journal file; runs on its own thread.
struct JournalWriter {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    file: Box<dyn FsFile>,
    /// Where the next line goes.
    len: u64,
    /// Lines in the file.
    lines: usize,
    /// Lines the last compaction kept.
    live: usize,
    window_ms: u64,
    max_entries: usize,
    /// A write failed and nothing has succeeded since (to warn once per failure streak).
    failing: bool,
}

impl JournalWriter {
    fn run(mut self, queue: &Mutex<Pending>) {
        let mut buf = Vec::new();
        loop {
            let (n, closed) = {
                let mut q = lock(queue);
                // Swapped, not copied: the two buffers take turns.
                std::mem::swap(&mut q.lines, &mut buf);
                (std::mem::take(&mut q.count), q.closed)
            };
            if n > 0 {
                self.append(&buf, n);
                buf.clear();
            }
            if closed {
                return;
            }
            std::thread::park_timeout(JOURNAL_FLUSH);
        }
    }

    /// Writes `n` lines (`buf`) at the end of the journal; compacts it when it has grown.
    fn append(&mut self, buf: &[u8], n: usize) {
        match self.file.write_all_at(buf, self.len) {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.lines += n;
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
        if self.lines > 2 * self.live + COMPACT_SLACK {
            if let Err(e) = self.compact(now_ms()) {
                tracing::warn!(error = %e, "compacting the de-duplication journal failed");
                // Try again after as many lines again.
                self.live = self.lines;
            }
        }
    }

    /// Rewrites the journal with the ids still inside the window, at most `max_entries` of the
    /// newest: two passes over the file, so memory stays flat whatever its size.
    fn compact(&mut self, now_ms: u64) -> io::Result<()> {
        let window_ms = self.window_ms;
        let live = |ts: u64| ts.saturating_add(window_ms) >= now_ms;
        let mut in_window = 0usize;
        for_each_line(self.file.as_ref(), |ts, _| {
            in_window += usize::from(live(ts))
        })?;
        let mut skip = in_window.saturating_sub(self.max_entries);
        let mut kept = 0;
        let old = self.file.as_ref();
        let new = publish_file_with(
            self.fs.as_ref(),
            &self.dir,
            JOURNAL_TMP_FILE,
            JOURNAL_FILE,
            |f| {
                let mut out = LineWriter::new(f);
                let mut result = Ok(());
                for_each_line(old, |ts, id| {
                    if !live(ts) || result.is_err() {
                        return;
                    }
                    if skip > 0 {
                        skip -= 1;
                        return;
                    }
                    kept += 1;
                    result = out.line(ts, id);
                })?;
                result?;
                out.finish()
            },
        )?;
        self.len = new.len()?;
        self.file = new;
        self.lines = kept;
        self.live = kept;
        Ok(())
    }
}

/// The state behind these locks stays consistent at every unlock: a panic elsewhere cannot leave
/// it torn.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Appends the line `<ms> <id> <crc32c of "<ms> <id>", 8 hex digits>\n`.
fn push_line(buf: &mut Vec<u8>, ts: u64, id: &str) {
    use std::io::Write as _;
    let start = buf.len();
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{ts} {id}");
    let crc = crc32c::crc32c(&buf[start..]);
    let _ = writeln!(buf, " {crc:08x}");
}

/// A journal line, if it is one: `<ms> <id> <crc>` with an id of visible ASCII and a matching
/// CRC-32C. Anything else (a torn, zero-filled or garbage line after a power cut) is skipped:
/// an id read from a damaged line could match a delivery that was never stored. A journal
/// without the [`JOURNAL_HEADER`] was written by hookbridge 0.1, whose lines have no CRC
/// (`checked` false); the first start rewrites it in the current format.
fn parse_line(line: &[u8], checked: bool) -> Option<(u64, &str)> {
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

/// Calls `f` for every complete, well-formed line of `file`. A last line without its newline
/// was torn by a crash and is skipped.
fn for_each_line(file: &dyn FsFile, mut f: impl FnMut(u64, &str)) -> io::Result<()> {
    let len = file.len()?;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    let mut checked = None;
    while offset < len {
        let n = (len - offset).min(READ_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..n], offset)?;
        offset += n as u64;
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + i + 1];
            start += i + 1;
            let checked = *checked.get_or_insert(line == JOURNAL_HEADER);
            if let Some((ts, id)) = parse_line(&line[..line.len() - 1], checked) {
                f(ts, id);
            }
        }
        pending.drain(..start);
    }
    Ok(())
}

/// Buffered positional writes of journal lines.
struct LineWriter<'a> {
    file: &'a dyn FsFile,
    offset: u64,
    buf: Vec<u8>,
}

impl<'a> LineWriter<'a> {
    /// Starts a journal: the header first.
    fn new(file: &'a dyn FsFile) -> Self {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        buf.extend_from_slice(JOURNAL_HEADER);
        LineWriter {
            file,
            offset: 0,
            buf,
        }
    }

    fn line(&mut self, ts: u64, id: &str) -> io::Result<()> {
        push_line(&mut self.buf, ts, id);
        if self.buf.len() >= READ_CHUNK {
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

    fn finish(mut self) -> io::Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RealFs;

    const H: u64 = 3_600_000;
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn open(dir: &Path, window: Duration, max: usize, now: u64) -> Arc<Dedup> {
        Arc::new(Dedup::open(Arc::new(RealFs), dir, window, max, now).unwrap())
    }

    fn new(c: Claim) -> ClaimGuard {
        match c {
            Claim::New(g) => g,
            other => panic!("expected New, got {other:?}"),
        }
    }

    fn in_progress(c: Claim) -> InProgress {
        match c {
            Claim::InProgress(w) => w,
            other => panic!("expected InProgress, got {other:?}"),
        }
    }

    fn is_duplicate(c: Claim) -> bool {
        matches!(c, Claim::Duplicate)
    }

    #[test]
    fn a_pending_id_is_never_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        let g = new(d.claim("a", 1));
        // A concurrent retry while the first is being stored must wait, not be acknowledged.
        let _w = in_progress(d.claim("a", 2));
        assert_eq!(d.pending(), 1);
        g.commit(3);
        assert!(is_duplicate(d.claim("a", 4)));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_dropped_claim_is_released_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        let g = new(d.claim("b", 5));
        drop(g);
        assert_eq!(d.pending(), 0);
        let g = new(d.claim("b", 6));
        g.commit(6);
        assert!(is_duplicate(d.claim("b", 7)));
    }

    #[tokio::test]
    async fn waiters_wake_on_commit_and_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);

        let g = new(d.claim("c", 1));
        let w = in_progress(d.claim("c", 1));
        let waiter = tokio::spawn(w.wait());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the append runs");
        g.commit(2);
        waiter.await.unwrap();
        assert!(is_duplicate(d.claim("c", 3)));

        let g = new(d.claim("e", 1));
        let w = in_progress(d.claim("e", 1));
        let waiter = tokio::spawn(w.wait());
        drop(g); // the append failed
        waiter.await.unwrap();
        let _retry = new(d.claim("e", 2)); // the retry now stores it itself
    }

    #[test]
    fn window_expiry_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        for (id, t) in [("old", 0), ("new", 20 * H)] {
            new(d.claim(id, t)).commit(t);
        }
        // Neither a pending nor a released claim reaches the journal.
        let _pending = new(d.claim("pending", 21 * H));
        drop(new(d.claim("released", 21 * H)));
        d.close();
        let d = open(dir.path(), DAY, 100, 25 * H);
        assert_eq!(d.len(), 1, "the expired id is not reloaded");
        assert!(is_duplicate(d.claim("new", 25 * H)));
        new(d.claim("old", 25 * H));
        new(d.claim("pending", 25 * H));
        new(d.claim("released", 25 * H));
    }

    #[test]
    fn bounded_oldest_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 3, 0);
        for i in 0..5u64 {
            new(d.claim(&format!("id{i}"), i)).commit(i);
        }
        assert!(is_duplicate(d.claim("id4", 10)));
        assert!(d.len() <= 4);
        new(d.claim("id0", 10)); // oldest evicted
    }

    #[test]
    fn a_journal_from_the_previous_version_is_read_and_rewritten_with_crcs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), "5 good\n17 \nxx yy\n9 torn").unwrap();
        let d = open(dir.path(), Duration::from_secs(3600), 100, 10);
        assert!(is_duplicate(d.claim("good", 10)));
        new(d.claim("yy", 10));
        new(d.claim("torn", 10));
        d.close();
        let text = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
        let mut want = JOURNAL_HEADER.to_vec();
        push_line(&mut want, 5, "good");
        assert_eq!(
            String::from_utf8(text).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

    #[test]
    fn torn_or_garbage_journal_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = JOURNAL_HEADER.to_vec();
        push_line(&mut text, 5, "good");
        let mut bad_crc = Vec::new();
        push_line(&mut bad_crc, 6, "flipped");
        bad_crc[2] ^= 1;
        text.extend_from_slice(&bad_crc);
        text.extend_from_slice(b"7 nocrc\n6 zero\0\0\n");
        let mut torn = Vec::new();
        push_line(&mut torn, 9, "torn-without-newline");
        text.extend_from_slice(&torn[..torn.len() - 1]);
        std::fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
        let d = open(dir.path(), Duration::from_secs(3600), 100, 10);
        assert!(is_duplicate(d.claim("good", 10)));
        assert_eq!(d.len(), 1);
        new(d.claim("flipped", 10));
        new(d.claim("nocrc", 10));
        new(d.claim("zero", 10));
        new(d.claim("torn-without-newline", 10));
    }

    #[test]
    fn the_journal_thread_compacts_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let max = 100;
        // The journal thread judges expiry by the wall clock.
        let t0 = now_ms();
        let d = open(dir.path(), DAY, max, t0);
        let n = 2 * COMPACT_SLACK as u64;
        for i in 0..n {
            new(d.claim(&format!("id{i}"), t0 + i)).commit(t0 + i);
        }
        d.close();
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        let lines = text.lines().count();
        assert!(
            lines < COMPACT_SLACK + 2 * max,
            "{lines} lines: not compacted"
        );
        let mut last = Vec::new();
        push_line(&mut last, t0 + n - 1, &format!("id{}", n - 1));
        assert!(text.ends_with(std::str::from_utf8(&last).unwrap()));
        assert!(!dir.path().join(JOURNAL_TMP_FILE).exists());
        let d = open(dir.path(), DAY, max, t0 + n);
        assert_eq!(d.len(), max);
        assert!(is_duplicate(d.claim(&format!("id{}", n - 1), t0 + n)));
        new(d.claim(&format!("id{}", n - 1 - max as u64), t0 + n));
    }
}
