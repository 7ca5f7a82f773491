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
//! - **stored**: [`ClaimGuard::commit`] was called after the append's fsync returned; later
//!   claims within the window are [`Claim::Duplicate`].
//!
//! A guard that is dropped without `commit` (the append failed, or never reached the spool)
//! returns the id to unknown, and a waiting retry then stores the delivery itself. The ingress
//! hands the guard to the spool with the record (`Spool::append_then`): the writer thread
//! commits it after the fsync, so a request whose connection is closed mid-append still records
//! the append's real outcome.
//!
//! # What is remembered: a keyed 128-bit fingerprint per id
//!
//! An id, pending or stored, is kept as its fingerprint: SipHash-1-3 with a 128-bit output, keyed
//! by 16 random bytes made when the journal is created and kept in its header (so they survive
//! restarts and compactions; the key never leaves the spool directory). Two different ids with
//! the same fingerprint would make the second a false `duplicate` — a 2xx for a delivery that
//! was never stored, i.e. lost — so nothing shorter than 128 bits is ever compared: among a
//! million remembered ids the chance that *any* two collide is about n²/2¹²⁹ ≈ 2·10⁻²⁷ (with 64
//! bits it would be 3·10⁻⁸ per million, and every new id would be another draw). The key makes
//! the fingerprints of any set of ids behave as random numbers, however the ids are chosen.
//!
//! The stored set is two compact structures ([`Remembered`]), about 21 bytes per id in all at
//! the default bound (instead of two heap strings, ~200 bytes per id before):
//!
//! - a **ring** of 16-byte fingerprints in insertion order, for expiry and eviction, in blocks
//!   of [`BLOCK`] entries (growing never copies the ring, and the memory of forgotten ids goes
//!   back block by block), and beside it when each was stored, as runs of entries stored in the
//!   same second (8 bytes a run: a handful of runs per second of traffic, not 4 bytes per id);
//! - an **index** ([`Index`]): open addressing over 32-bit slots, each a ring position plus a
//!   tag from the fingerprint, at most 4/5 full and never larger than `max_entries` needs
//!   (5 bytes per id when full; a power-of-two table such as hashbrown's took 10.5 at a
//!   million, which was 5 MiB of a 48 MiB budget). It only finds candidates: a duplicate needs
//!   all 128 bits of the ring entry to match, so a fault in the index can make the set forget
//!   an id, never invent one.
//!
//! Times are kept in whole seconds, rounded *up*: a stored id may be remembered up to one second
//! longer than the window, never shorter (both only decide between a duplicate answer and
//! storing again; neither can acknowledge something that was not stored). The ring may hold
//! stale entries (an id stored again after its window passed while older-looking entries
//! stayed in front of it); the index always points at the newest, and popping a stale entry
//! leaves it alone. Expiry and eviction (`auth.dedup_max_entries`, oldest first, stale entries
//! counted) are what they were with strings.
//!
//! # The journal: `<spool.dir>/dedup.journal`
//!
//! Stored ids survive a restart through a binary journal of fixed-size records. Do not reorder
//! or resize a field: a change is a new [`VERSION`] and a conversion in [`Dedup::open`].
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
//! Records are written by a thread of their own every 10 ms (never on the async runtime; no
//! syscall or wake-up per delivery), after the delivery's fsync and without one of their own: a
//! power cut loses at most the last few seconds of ids, which only means a retry of those is
//! stored and published twice — still within the at-least-once promise (and JetStream's own
//! de-duplication window). The file is fsync'd when it is opened and at a clean stop, so a cut
//! loses only what was journaled since the last start. A record is trusted only if it is whole and its CRC matches: a torn
//! tail (shorter than a record) is ignored and the next append overwrites it, a zeroed,
//! garbage or foreign record (the CRC covers the key) is skipped and the records after it still
//! count (they sit at fixed offsets), so a power cut can make the journal forget recent ids but
//! never invent one. Loading is big sequential reads and a CRC per record: tens of milliseconds
//! for a million ids, where the text journal of hookbridge ≤ 0.1 (`<ms> <id> <crc32c>` lines,
//! header `# hookbridge dedup journal v2`, or no header and no CRC) took 1.7 s. Such a journal
//! is read once at start, its ids fingerprinted with a new key, and rewritten in this format. A
//! journal with this magic but another version is refused before anything is changed; one whose
//! header is damaged is forgotten (a warning), which costs only duplicates.
//!
//! The journal is compacted (rewritten with only the live ids, through the spool's crash-safe
//! replace) at start when it is in an old format or holds more than twice the live ids, and by
//! its thread when it has grown to that.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use siphasher::sip128::SipHasher13;
use tokio::sync::watch;

use crate::spool::fs::publish_file_with;
use crate::spool::FsFile;
use crate::spool::SpoolFs;

pub const JOURNAL_FILE: &str = "dedup.journal";
const JOURNAL_TMP_FILE: &str = "dedup.journal.tmp";
/// Most ids that can be remembered (`auth.dedup_max_entries` is checked against it): ring
/// positions in the index are 32 bits, and this many ids already take about 3 GB.
pub const MAX_ENTRIES: usize = 100_000_000;
const MAGIC: [u8; 8] = *b"HBDEDUPJ";
/// The journal format this version writes and reads (the text formats were 1 and 2).
const VERSION: u32 = 3;
const HEADER_LEN: usize = 32;
const RECORD_LEN: usize = 24;
/// First line of a text journal whose lines carry a CRC (hookbridge ≤ 0.1).
const V2_HEADER: &[u8] = b"# hookbridge dedup journal v2\n";
/// Longest id a text journal line may carry (the ingress accepts at most 256 characters).
const MAX_ID_LEN: usize = 256;
/// Extra records tolerated beyond twice the live ids before the journal is compacted.
const COMPACT_SLACK: usize = 10_000;
/// Records read or written at a time (768 KiB).
const IO_RECORDS: usize = 1 << 15;
/// How often the journal thread writes the records committed since its last write. A crash
/// loses at most this much of the journal's tail (which the page cache would not have kept from
/// a power cut anyway): a retry of those ids is stored and published again, at-least-once.
const JOURNAL_FLUSH: Duration = Duration::from_millis(10);
/// Ring entries per block (64 KiB).
const BLOCK: usize = 4096;

pub struct Dedup {
    window_ms: u64,
    key: Key,
    state: Mutex<State>,
    journal: Arc<Mutex<Queue>>,
    journal_thread: Mutex<Option<JoinHandle<()>>>,
    /// Size of the journal file, kept by its thread.
    journal_bytes: Arc<AtomicU64>,
}

struct State {
    /// Ids stored within the window (and some not yet evicted past it).
    remembered: Remembered,
    /// Ids whose first append is in progress, with the channel their waiters wait on. The
    /// channel is made by the first waiter (most claims have none, so a claim costs no
    /// allocation); the guard takes it out with the entry and drops it, which wakes them.
    pending: HashMap<Fingerprint, Option<watch::Sender<()>>, BuildHasherDefault<FirstWord>>,
}

/// Records waiting for the journal thread, which writes them every [`JOURNAL_FLUSH`]: a commit
/// appends to a buffer instead of waking a thread or making a syscall per delivery.
#[derive(Default)]
struct Queue {
    records: Vec<u8>,
    count: usize,
    /// Set by [`Dedup::close`] (or at open when there is no journal to write): the thread
    /// writes what is left and exits; later commits are remembered in memory only.
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
    fingerprint: Fingerprint,
    committed: bool,
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
        let secs = secs_of(now_ms);
        let mut s = self.dedup.lock();
        let waiters = s.pending.remove(&self.fingerprint);
        // Invariant 1: the only way into the stored set, called only after the append's Ok.
        s.remembered.push(self.fingerprint, secs);
        drop(s);
        // Waiters wake (their channel's sender is gone) and find the id stored.
        drop(waiters);
        let mut j = lock(&self.dedup.journal);
        if !j.closed {
            push_record(&mut j.records, &self.dedup.key, secs, self.fingerprint);
            j.count += 1;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.committed {
            // Taken out under the lock, dropped (waking the waiters) after it.
            let waiters = self.dedup.lock().pending.remove(&self.fingerprint);
            drop(waiters);
        }
    }
}

impl Dedup {
    /// Opens the journal in `dir` and loads the ids still inside the window. Blocking.
    /// `max_entries` is capped at [`MAX_ENTRIES`]. Fails on an I/O error or a journal of an
    /// unknown format version (which it leaves as it is).
    pub fn open(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        window: Duration,
        max_entries: usize,
        now_ms: u64,
    ) -> io::Result<Dedup> {
        let window_ms = window.as_millis() as u64;
        let max_entries = max_entries.min(MAX_ENTRIES);
        let path = dir.join(JOURNAL_FILE);
        let existing = match fs.open_write(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let loaded = match &existing {
            Some(file) => load(file.as_ref(), window_ms, max_entries, now_ms)?,
            None => Loaded {
                key: Key::random(),
                remembered: Remembered::new(max_entries, 0),
                records: None,
            },
        };
        let Loaded {
            key,
            mut remembered,
            records,
        } = loaded;
        remembered.evict(now_ms, window_ms);
        let live = remembered.len();
        let journal_bytes = Arc::new(AtomicU64::new(0));
        let journal = Arc::new(Mutex::new(Queue::default()));

        // A journal in this format without much dead weight is appended to as it is: no
        // rewrite on the way to ready. It is fsync'd (mostly written back already), so what
        // the last run journaled survives a power cut now, as a rewrite would have made it.
        let reuse = records.filter(|&n| n <= 2 * live + COMPACT_SLACK);
        let opened = match (reuse, existing) {
            (Some(n), Some(file)) => {
                if let Err(e) = file.sync_data() {
                    tracing::warn!(error = %e, "syncing the de-duplication journal failed");
                }
                Some((file, n))
            }
            (_, existing) => {
                let compacted =
                    publish_file_with(fs.as_ref(), dir, JOURNAL_TMP_FILE, JOURNAL_FILE, |f| {
                        let mut out = RecordWriter::new(f, &key);
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
        };
        let thread = match opened {
            Some((file, records)) => {
                let len = (HEADER_LEN + records * RECORD_LEN) as u64;
                journal_bytes.store(len, Ordering::Relaxed);
                let writer = JournalWriter {
                    fs,
                    dir: dir.to_owned(),
                    file,
                    len,
                    records,
                    live,
                    window_ms,
                    max_entries,
                    key: key.clone(),
                    failing: false,
                    bytes: journal_bytes.clone(),
                };
                let queue = journal.clone();
                Some(
                    std::thread::Builder::new()
                        .name("dedup-journal".into())
                        .spawn(move || writer.run(&queue))?,
                )
            }
            None => {
                lock(&journal).closed = true;
                None
            }
        };
        Ok(Dedup {
            window_ms,
            key,
            state: Mutex::new(State {
                remembered,
                pending: HashMap::default(),
            }),
            journal,
            journal_thread: Mutex::new(thread),
            journal_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Ids currently remembered as stored.
    pub fn len(&self) -> usize {
        self.lock().remembered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is remembered as stored (whether or not its window has passed: [`claim`]
    /// judges that).
    ///
    /// [`claim`]: Dedup::claim
    pub fn contains(&self, id: &str) -> bool {
        let fp = self.key.fingerprint(id);
        self.lock().remembered.find(fp).is_some()
    }

    /// Ids whose first append is in progress.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Bytes of the journal file (0 when there is none).
    pub fn journal_bytes(&self) -> u64 {
        self.journal_bytes.load(Ordering::Relaxed)
    }

    /// Claims `id` for storing, unless it was stored within the window or is being stored.
    pub fn claim(self: &Arc<Self>, id: &str, now_ms: u64) -> Claim {
        let fingerprint = self.key.fingerprint(id);
        let mut s = self.lock();
        s.remembered.evict(now_ms, self.window_ms);
        if let Some(waiters) = s.pending.get_mut(&fingerprint) {
            // Subscribed under the lock, so the guard cannot drop the sender before this
            // receiver exists: no wake-up is lost.
            let rx = waiters
                .get_or_insert_with(|| watch::channel(()).0)
                .subscribe();
            return Claim::InProgress(InProgress(rx));
        }
        // Invariant 1: a duplicate only for a full 128-bit match of an id that was committed.
        if let Some(secs) = s.remembered.find(fingerprint) {
            if live(secs, self.window_ms, now_ms) {
                return Claim::Duplicate;
            }
        }
        s.pending.insert(fingerprint, None);
        Claim::New(ClaimGuard {
            dedup: self.clone(),
            fingerprint,
            committed: false,
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

/// The fingerprint key and what is derived from it.
#[derive(Clone)]
struct Key {
    bytes: [u8; 16],
    sip: SipHasher13,
    /// CRC-32C of the key: where every record's CRC starts, so a record written under another
    /// key never passes.
    crc: u32,
}

impl Key {
    fn random() -> Key {
        Key::new(rand::random())
    }

    fn new(bytes: [u8; 16]) -> Key {
        Key {
            bytes,
            sip: SipHasher13::new_with_key(&bytes),
            crc: crc32c::crc32c(&bytes),
        }
    }

    fn fingerprint(&self, id: &str) -> Fingerprint {
        Fingerprint::from_u128(self.sip.hash(id.as_bytes()).as_u128())
    }
}

/// A keyed 128-bit fingerprint of an id, as four words (the index takes its tag and home from
/// them).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Fingerprint([u32; 4]);

/// A fingerprint is already a keyed hash of the id: a map keyed by it takes its first 64 bits
/// as they are ([`FirstWord`]) instead of hashing them again with SipHash on every claim and
/// release. The key is secret, so a sender cannot pick ids that collide here either.
impl std::hash::Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | u64::from(self.0[1]) << 32);
    }
}

/// The [`Hasher`] for maps keyed by [`Fingerprint`]: the value written is the hash.
#[derive(Default)]
struct FirstWord(u64);

impl Hasher for FirstWord {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `Fingerprint`); fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

impl Fingerprint {
    fn from_u128(v: u128) -> Fingerprint {
        Fingerprint([
            v as u32,
            (v >> 32) as u32,
            (v >> 64) as u32,
            (v >> 96) as u32,
        ])
    }

    fn to_u128(self) -> u128 {
        let [a, b, c, d] = self.0.map(u128::from);
        a | b << 32 | c << 64 | d << 96
    }
}

/// `ms` as Unix seconds, rounded up (so an id is never forgotten early).
fn secs_of(ms: u64) -> u32 {
    ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32
}

/// Whether an id stored at `secs` is still inside the window at `now_ms`.
fn live(secs: u32, window_ms: u64, now_ms: u64) -> bool {
    (u64::from(secs) * 1000).saturating_add(window_ms) >= now_ms
}

/// Ring entries stored in the same second: from `start` up to the next run's start.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    /// The first entry's sequence number, mod 2^32: the ring never holds more than
    /// [`MAX_ENTRIES`] < 2^32 entries, so it is read as an offset from the ring's head.
    start: u32,
    secs: u32,
}

/// Entries in insertion order, each with a sequence number (`head..tail`): the fingerprints in
/// blocks of [`BLOCK`] (the first block holds `head`, and a block is released once `head` has
/// left it), and when each was stored as [`Run`]s beside them. Entries arrive a second at a
/// time, so a run stands for many of them: 16 bytes per entry plus 8 per run, instead of 20 per
/// entry with the time in it. The runs keep every entry's own time, in or out of order.
#[derive(Default)]
struct Ring {
    blocks: VecDeque<Box<[Fingerprint]>>,
    /// One released block kept for the next push, so a full ring turning over does not allocate.
    spare: Option<Box<[Fingerprint]>>,
    /// In sequence order, the first starting at `head`; empty exactly when the ring is.
    times: VecDeque<Run>,
    head: u64,
    tail: u64,
}

impl Ring {
    fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    fn get(&self, seq: u64) -> &Fingerprint {
        let block = (seq / BLOCK as u64 - self.head / BLOCK as u64) as usize;
        &self.blocks[block][(seq % BLOCK as u64) as usize]
    }

    /// When the entry `seq` (in `head..tail`) was stored.
    fn secs(&self, seq: u64) -> u32 {
        debug_assert!(self.head <= seq && seq < self.tail);
        let head = self.head as u32;
        let at = (seq - self.head) as u32;
        let i = self
            .times
            .partition_point(|r| r.start.wrapping_sub(head) <= at);
        self.times[i - 1].secs
    }

    fn front(&self) -> Option<(Fingerprint, u32)> {
        (self.head < self.tail).then(|| (*self.get(self.head), self.times[0].secs))
    }

    /// Every entry, oldest first: (seq, fingerprint, when it was stored).
    fn iter(&self) -> impl Iterator<Item = (u64, Fingerprint, u32)> + '_ {
        let mut runs = self.times.iter().peekable();
        let mut secs = 0;
        (self.head..self.tail).map(move |seq| {
            if let Some(r) = runs.next_if(|r| r.start == seq as u32) {
                secs = r.secs;
            }
            (seq, *self.get(seq), secs)
        })
    }

    fn push(&mut self, fp: Fingerprint, secs: u32) -> u64 {
        if self.tail.is_multiple_of(BLOCK as u64) {
            let block = self
                .spare
                .take()
                .unwrap_or_else(|| vec![Fingerprint::default(); BLOCK].into_boxed_slice());
            self.blocks.push_back(block);
        }
        let seq = self.tail;
        let last = self.blocks.back_mut().expect("a block holds the tail");
        last[(seq % BLOCK as u64) as usize] = fp;
        if self.times.back().is_none_or(|r| r.secs != secs) {
            self.times.push_back(Run {
                start: seq as u32,
                secs,
            });
        }
        self.tail += 1;
        seq
    }

    fn pop_front(&mut self) {
        debug_assert!(self.head < self.tail);
        self.head += 1;
        if self.head.is_multiple_of(BLOCK as u64) {
            self.spare = self.blocks.pop_front();
        }
        // The first run now starts at the new head, or is over (the next one starts there, or
        // the ring is empty).
        if self.head == self.tail
            || self
                .times
                .get(1)
                .is_some_and(|r| r.start == self.head as u32)
        {
            self.times.pop_front();
        } else {
            self.times[0].start = self.head as u32;
        }
    }
}

/// The stored ids: the [`Ring`] for order, an [`Index`] of ring positions to find them by
/// fingerprint. The index holds one position per fingerprint, its newest entry's; the ring
/// never holds more than `max_entries` entries (stale ones included).
struct Remembered {
    ring: Ring,
    index: Index,
    max_entries: usize,
}

impl Remembered {
    /// Room for `n` ids to begin with.
    fn new(max_entries: usize, n: usize) -> Remembered {
        let max_entries = max_entries.clamp(1, MAX_ENTRIES);
        Remembered {
            ring: Ring::default(),
            index: Index::new(max_entries, n),
            max_entries,
        }
    }

    /// Distinct fingerprints remembered.
    fn len(&self) -> usize {
        self.index.len
    }

    /// When `fp` was stored (its newest entry), if it is remembered.
    fn find(&self, fp: Fingerprint) -> Option<u32> {
        let slot = self.index.find(&self.ring, fp, None)?;
        Some(
            self.ring
                .secs(self.index.seq(&self.ring, self.index.slots[slot])),
        )
    }

    /// Remembers `fp` as stored at `secs`; an older entry of it stays in the ring, stale. The
    /// oldest entries go first if the ring is full (the next claim would evict them anyway).
    fn push(&mut self, fp: Fingerprint, secs: u32) {
        while self.ring.len() >= self.max_entries {
            self.pop_front();
        }
        let seq = self.ring.push(fp, secs);
        self.index.insert(&self.ring, fp, seq);
    }

    /// Forgets the oldest entry (if it is not stale, its fingerprint too).
    fn pop_front(&mut self) {
        let Some((fp, _)) = self.ring.front() else {
            return;
        };
        if let Some(slot) = self.index.find(&self.ring, fp, Some(self.ring.head)) {
            self.index.remove(&self.ring, slot);
        }
        self.ring.pop_front();
    }

    /// Forgets, oldest first, what is past the window and what is over `max_entries`.
    fn evict(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((_, secs)) = self.ring.front() {
            let expired = !live(secs, window_ms, now_ms);
            let over = self.ring.len() > self.max_entries;
            if !expired && !over {
                break;
            }
            self.pop_front();
        }
    }

    /// The entries the index points at (stale ones left out), oldest first.
    fn live_entries(&self) -> impl Iterator<Item = (u32, Fingerprint)> + '_ {
        let ring = &self.ring;
        ring.iter().filter_map(move |(seq, fp, secs)| {
            self.index.find(ring, fp, Some(seq)).map(|_| (secs, fp))
        })
    }
}

/// Open addressing with linear probing over 32-bit slots, at most 4/5 full. A slot is 0 when
/// empty; otherwise its low `pos_bits` bits are a ring position (the entry's sequence number
/// mod 2^`pos_bits`, unique because the ring holds at most `max_entries` ≤ 2^`pos_bits`) and the
/// bits above a tag from the fingerprint (never 0), so a probe rarely has to look at the ring.
/// A slot's home is the fingerprint's high 64 bits scaled to the table size (any size, not
/// only powers of two: 5 bytes per id at most, instead of up to 11 for a power-of-two table).
/// Removal shifts the rest of the cluster back instead of leaving tombstones, so the table
/// never needs rebuilding at a fixed size. Every answer is confirmed against the full 128-bit
/// fingerprint in the ring.
struct Index {
    slots: Box<[u32]>,
    len: usize,
    pos_bits: u32,
    /// The size that holds `max_entries` at 4/5: the table never grows beyond it.
    max_slots: usize,
}

impl Index {
    fn new(max_entries: usize, n: usize) -> Index {
        let pos_bits = (usize::BITS - (max_entries - 1).leading_zeros()).max(1);
        let max_slots = max_entries + max_entries / 4 + 2;
        Index {
            slots: vec![0; Self::size_for(n, max_slots)].into_boxed_slice(),
            len: 0,
            pos_bits,
            max_slots,
        }
    }

    /// Room for `n` at most half full (so growing is rare), within `max_slots`.
    fn size_for(n: usize, max_slots: usize) -> usize {
        n.saturating_mul(2).clamp(64, max_slots.max(64))
    }

    fn mask(&self) -> u32 {
        (1u32 << self.pos_bits) - 1
    }

    fn tag(&self, fp: Fingerprint) -> u32 {
        (fp.0[0] >> self.pos_bits).max(1) << self.pos_bits
    }

    fn home(&self, fp: Fingerprint) -> usize {
        let hi = u64::from(fp.0[2]) | u64::from(fp.0[3]) << 32;
        ((u128::from(hi) * self.slots.len() as u128) >> 64) as usize
    }

    /// The sequence number a slot's ring position stands for.
    fn seq(&self, ring: &Ring, slot: u32) -> u64 {
        let pos = slot & self.mask();
        ring.head + u64::from(pos.wrapping_sub(ring.head as u32) & self.mask())
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The slot holding `fp` (with `at`, only if it points at that sequence number).
    fn find(&self, ring: &Ring, fp: Fingerprint, at: Option<u64>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let tag = self.tag(fp);
        let mut i = self.home(fp);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & !self.mask() == tag {
                let seq = self.seq(ring, s);
                let hit = match at {
                    Some(at) => seq == at,
                    None => *ring.get(seq) == fp,
                };
                if hit {
                    return Some(i);
                }
            }
            i = self.next(i);
        }
    }

    /// Points `fp` at `seq`, the ring's newest entry.
    fn insert(&mut self, ring: &Ring, fp: Fingerprint, seq: u64) {
        let value = self.tag(fp) | (seq as u32 & self.mask());
        if let Some(i) = self.find(ring, fp, None) {
            self.slots[i] = value;
            return;
        }
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.grow(ring);
        }
        let mut i = self.home(fp);
        while self.slots[i] != 0 {
            i = self.next(i);
        }
        self.slots[i] = value;
        self.len += 1;
    }

    /// Empties slot `i`, moving later entries of its cluster back so every entry stays
    /// reachable from its home.
    fn remove(&mut self, ring: &Ring, i: usize) {
        let size = self.slots.len();
        let mut hole = i;
        let mut j = i;
        loop {
            j = self.next(j);
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let home = self.home(*ring.get(self.seq(ring, s)));
            // It may move back into the hole unless its home lies after the hole.
            if (j + size - home) % size >= (j + size - hole) % size {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }

    fn grow(&mut self, ring: &Ring) {
        let size = Self::size_for(self.len + 1, self.max_slots);
        let old = std::mem::replace(&mut self.slots, vec![0; size].into_boxed_slice());
        for s in old.iter().copied().filter(|&s| s != 0) {
            let mut i = self.home(*ring.get(self.seq(ring, s)));
            while self.slots[i] != 0 {
                i = self.next(i);
            }
            self.slots[i] = s;
        }
    }
}

/// What [`load`] found in an existing journal.
struct Loaded {
    key: Key,
    remembered: Remembered,
    /// Whole record slots, when the file is in the current format with an intact header and can
    /// be appended to; `None` when it must be rewritten.
    records: Option<usize>,
}

/// Reads a journal of any known format: the ids in it still inside the window, at most
/// `max_entries` of the newest.
fn load(file: &dyn FsFile, window_ms: u64, max_entries: usize, now_ms: u64) -> io::Result<Loaded> {
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
        return Ok(Loaded {
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
            return Ok(Loaded {
                key: Key::random(),
                remembered: Remembered::new(max_entries, 0),
                records: None,
            });
        }
    };
    let slots = ((len - HEADER_LEN as u64) / RECORD_LEN as u64) as usize;
    let mut remembered = Remembered::new(max_entries, slots.min(max_entries));
    for_each_record(file, &key, |secs, fp| keep(&mut remembered, secs, fp))?;
    Ok(Loaded {
        key,
        remembered,
        records: Some(slots),
    })
}

/// The version and key of a header whose magic and CRC are right.
fn parse_header(h: &[u8]) -> Option<(u32, [u8; 16])> {
    let crc = u32::from_le_bytes(h[28..32].try_into().ok()?);
    if h[..8] != MAGIC || crc != crc32c::crc32c(&h[..28]) {
        return None;
    }
    let version = u32::from_le_bytes(h[8..12].try_into().ok()?);
    Some((version, h[12..28].try_into().ok()?))
}

fn header(key: &Key) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..28].copy_from_slice(&key.bytes);
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn push_record(buf: &mut Vec<u8>, key: &Key, secs: u32, fp: Fingerprint) {
    let start = buf.len();
    buf.extend_from_slice(&secs.to_le_bytes());
    buf.extend_from_slice(&fp.to_u128().to_le_bytes());
    let crc = crc32c::crc32c_append(key.crc, &buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// A record, if it is one: anything whose CRC does not match (torn, zeroed, garbage, written
/// under another key) is skipped — trusting it could make an id look stored that was not.
fn parse_record(r: &[u8], key: &Key) -> Option<(u32, Fingerprint)> {
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
fn for_each_record(
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
struct RecordWriter<'a> {
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
struct JournalWriter {
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
            if let Err(e) = self.compact(now_ms()) {
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

/// A text journal line (hookbridge ≤ 0.1), if it is one: `<ms> <id> <crc>` with an id of
/// visible ASCII and a matching CRC-32C. Anything else (a torn, zero-filled or garbage line
/// after a power cut) is skipped: an id read from a damaged line could match a delivery that
/// was never stored. A text journal without the [`V2_HEADER`] was written by the first version,
/// whose lines have no CRC (`checked` false).
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

/// Calls `f` for every complete, well-formed line of a text journal. A last line without its
/// newline was torn by a crash and is skipped.
fn for_each_line(file: &dyn FsFile, mut f: impl FnMut(u64, &str)) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng};

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

    fn store(d: &Arc<Dedup>, id: &str, t: u64) {
        new(d.claim(id, t)).commit(t);
    }

    fn journal(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(JOURNAL_FILE)).unwrap()
    }

    /// A text journal line of hookbridge ≤ 0.1.
    fn v2_line(ts: u64, id: &str) -> String {
        let body = format!("{ts} {id}");
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body} {crc:08x}\n")
    }

    #[test]
    fn a_pending_id_is_never_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        let g = new(d.claim("a", 1));
        // A concurrent retry while the first is being stored must wait, not be acknowledged.
        let _w = in_progress(d.claim("a", 2));
        assert_eq!(d.pending(), 1);
        assert!(!d.contains("a"));
        g.commit(3);
        assert!(is_duplicate(d.claim("a", 4)));
        assert!(d.contains("a"));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_dropped_claim_is_released_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        let g = new(d.claim("b", 5));
        drop(g);
        assert_eq!(d.pending(), 0);
        assert!(!d.contains("b"));
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

        // The first waiter makes the channel, the second shares it; both subscribed while the
        // id was pending, so both wake even though neither polls before the outcome.
        let g = new(d.claim("f", 1));
        let (w1, w2) = (in_progress(d.claim("f", 1)), in_progress(d.claim("f", 1)));
        g.commit(2);
        w1.wait().await;
        w2.wait().await;
        assert!(is_duplicate(d.claim("f", 3)));
    }

    #[test]
    fn window_expiry_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        for (id, t) in [("old", 0), ("new", 20 * H)] {
            store(&d, id, t);
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
    fn expiry_is_by_the_second_rounded_up_never_early() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(10);
        let d = open(dir.path(), window, 100, 0);
        store(&d, "a", 1_001); // remembered as stored at 2 s
        assert!(is_duplicate(d.claim("a", 11_001)), "the full window");
        assert!(is_duplicate(d.claim("a", 12_000)), "up to a second more");
        new(d.claim("a", 12_001));
    }

    #[test]
    fn bounded_oldest_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 3, 0);
        for i in 0..5u64 {
            store(&d, &format!("id{i}"), i);
        }
        assert!(is_duplicate(d.claim("id4", 10)));
        assert!(d.len() <= 4);
        new(d.claim("id0", 10)); // oldest evicted
    }

    #[test]
    fn a_stale_entry_leaves_the_newer_one_alone() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(60);
        let d = open(dir.path(), window, 3, 0);
        // Commits carry their own clock readings, which need not be in order.
        store(&d, "b", 100_000);
        store(&d, "a", 0);
        // "a" is past its window, but "b" in front of it is not, so it stays in the ring.
        assert_eq!(d.len(), 2);
        store(&d, "a", 70_000); // stored again: the ring holds b, a (stale), a
        assert_eq!(d.len(), 2);
        assert!(is_duplicate(d.claim("a", 71_000)));
        // Over the bound: "b" goes, then the stale "a"; the newer "a" stays.
        store(&d, "c", 72_000);
        assert!(is_duplicate(d.claim("a", 72_000)));
        assert!(!d.contains("b"));
        assert_eq!(d.len(), 2);
        d.close();
        let d = open(dir.path(), window, 3, 73_000);
        assert!(is_duplicate(d.claim("a", 73_000)));
        assert!(is_duplicate(d.claim("c", 73_000)));
    }

    #[test]
    fn the_ring_keeps_each_entry_s_own_time() {
        let mut ring = Ring::default();
        let mut want = VecDeque::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut secs = 1_000u32;
        for step in 0..50_000u32 {
            // Mostly the same second as the last entry, sometimes later, sometimes earlier:
            // out-of-order times must come back as they went in.
            if rng.random_ratio(1, 50) {
                secs += rng.random_range(1..3);
            } else if rng.random_ratio(1, 200) {
                secs -= 1;
            }
            if !want.is_empty() && rng.random_ratio(45, 100) {
                // Empty the ring now and then, so pushes onto an empty ring are covered.
                let n = if rng.random_ratio(1, 500) {
                    want.len()
                } else {
                    1
                };
                for _ in 0..n {
                    ring.pop_front();
                    want.pop_front();
                }
            } else {
                let fp = Fingerprint([step, 0, 0, 0]);
                let seq = ring.push(fp, secs);
                want.push_back((seq, fp, secs));
            }
            assert_eq!(ring.len(), want.len());
            assert_eq!(ring.front(), want.front().map(|&(_, fp, s)| (fp, s)));
            if step % 97 == 0 {
                for &(seq, fp, s) in &want {
                    assert_eq!((*ring.get(seq), ring.secs(seq)), (fp, s), "step {step}");
                }
                assert!(ring.iter().eq(want.iter().copied()), "step {step}");
            }
        }
        // A run per change of second among the entries held, not one per entry.
        let changes = want
            .iter()
            .zip(want.iter().skip(1))
            .filter(|(a, b)| a.2 != b.2)
            .count();
        assert_eq!(ring.times.len(), changes + 1);
        assert!(want.len() > 10 * (changes + 1), "{} {changes}", want.len());
    }

    /// The old string set, as the reference for the compact one (with times in seconds
    /// rounded up, as the compact set keeps them).
    #[derive(Default)]
    struct Model {
        seen: HashMap<String, u32>,
        order: VecDeque<(u32, String)>,
        pending: HashSet<String>,
    }

    impl Model {
        fn claim(&mut self, id: &str, now: u64, window_ms: u64, max: usize) -> &'static str {
            while let Some((secs, id)) = self.order.front() {
                if live(*secs, window_ms, now) && self.order.len() <= max {
                    break;
                }
                let (secs, id) = (*secs, id.clone());
                self.order.pop_front();
                if self.seen.get(&id) == Some(&secs) {
                    self.seen.remove(&id);
                }
            }
            if self.pending.contains(id) {
                return "InProgress";
            }
            if self.seen.get(id).is_some_and(|&s| live(s, window_ms, now)) {
                return "Duplicate";
            }
            self.pending.insert(id.to_owned());
            "New"
        }

        fn commit(&mut self, id: &str, now: u64) {
            self.pending.remove(id);
            self.order.push_back((secs_of(now), id.to_owned()));
            self.seen.insert(id.to_owned(), secs_of(now));
        }
    }

    #[test]
    fn the_compact_set_answers_like_the_string_set() {
        // Expiry and a bound the ring turns over many times (its blocks); then a tiny bound,
        // so that the index is small, full and wraps around its end.
        compare_with_model(Duration::from_secs(30), 2_500, 4_000);
        compare_with_model(DAY, 50, 120);
    }

    fn compare_with_model(window: Duration, max: usize, ids: u32) {
        let dir = tempfile::tempdir().unwrap();
        let window_ms = window.as_millis() as u64;
        let d = open(dir.path(), window, max, 0);
        d.close(); // memory only: the journal thread's clock is the wall clock
        let mut model = Model::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut held: Vec<(String, ClaimGuard)> = Vec::new();
        let mut now = 1_000_000u64;
        let mut answers = HashMap::new();
        for step in 0..60_000 {
            // Mostly forward, sometimes a little back: commits come from tasks with their own
            // clock readings.
            now = if rng.random_ratio(1, 20) {
                now.saturating_sub(rng.random_range(0..5_000))
            } else {
                now + rng.random_range(0..40)
            };
            if !held.is_empty() && (held.len() > 200 || rng.random_ratio(1, 4)) {
                let (id, g) = held.swap_remove(rng.random_range(0..held.len()));
                if rng.random_ratio(9, 10) {
                    g.commit(now);
                    model.commit(&id, now);
                } else {
                    drop(g);
                    model.pending.remove(&id);
                }
                continue;
            }
            let id = format!("msg_{}", rng.random_range(0..ids));
            let want = model.claim(&id, now, window_ms, max);
            let got = d.claim(&id, now);
            assert_eq!(
                format!("{got:?}"),
                want,
                "max {max}, step {step}: {id} at {now}"
            );
            *answers.entry(want).or_insert(0) += 1;
            if let Claim::New(g) = got {
                held.push((id, g));
            }
            assert_eq!(d.len(), model.seen.len(), "step {step}");
        }
        // Every branch was taken many times.
        for kind in ["New", "Duplicate", "InProgress"] {
            assert!(
                answers.get(kind).copied().unwrap_or(0) > 100,
                "max {max}: {answers:?}"
            );
        }
    }

    #[test]
    fn the_journal_round_trips_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        for i in 0..50 {
            store(&d, &format!("id{i}"), i * 1000);
        }
        d.close();
        let bytes = journal(dir.path());
        assert_eq!(bytes.len(), HEADER_LEN + 50 * RECORD_LEN);
        assert_eq!(&bytes[..8], &MAGIC);
        let d = open(dir.path(), DAY, 100, 60_000);
        assert_eq!(d.len(), 50);
        for i in 0..50 {
            assert!(is_duplicate(d.claim(&format!("id{i}"), 60_000)));
        }
        new(d.claim("id50", 60_000));
        store(&d, "later", 61_000);
        d.close();
        // Appended to, not rewritten: the same key, so the same fingerprints.
        assert_eq!(journal(dir.path())[..HEADER_LEN], bytes[..HEADER_LEN]);
        let d = open(dir.path(), DAY, 100, 62_000);
        assert!(is_duplicate(d.claim("later", 62_000)));
        assert!(is_duplicate(d.claim("id0", 62_000)));
        assert_eq!(d.journal_bytes(), (HEADER_LEN + 51 * RECORD_LEN) as u64);
    }

    fn journal_of(ids: &[&str]) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let d = open(dir.path(), DAY, 100, 0);
        for id in ids {
            store(&d, id, 1000);
        }
        d.close();
        let bytes = journal(dir.path());
        (dir, bytes)
    }

    #[test]
    fn a_torn_tail_is_ignored_and_then_overwritten() {
        let (dir, mut bytes) = journal_of(&["a", "b", "torn"]);
        bytes.truncate(bytes.len() - 5);
        std::fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let d = open(dir.path(), DAY, 100, 2000);
        assert_eq!(d.len(), 2);
        assert!(!d.contains("torn"));
        store(&d, "after", 3000);
        d.close();
        // The new record went where the torn one began, so it and the old ones all count.
        assert_eq!(journal(dir.path()).len(), HEADER_LEN + 3 * RECORD_LEN);
        let d = open(dir.path(), DAY, 100, 4000);
        for id in ["a", "b", "after"] {
            assert!(is_duplicate(d.claim(id, 4000)), "{id}");
        }
        new(d.claim("torn", 4000));
    }

    #[test]
    fn damaged_records_are_skipped_and_the_rest_still_count() {
        let (dir, mut bytes) = journal_of(&["a", "zeroed", "b", "flipped", "c", "garbage"]);
        let rec = |i: usize| HEADER_LEN + i * RECORD_LEN..HEADER_LEN + (i + 1) * RECORD_LEN;
        bytes[rec(1)].fill(0);
        bytes[rec(3)][7] ^= 0x10;
        let garbage: Vec<u8> = (0..RECORD_LEN as u8).collect();
        bytes[rec(5)].copy_from_slice(&garbage);
        std::fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let d = open(dir.path(), DAY, 100, 2000);
        assert_eq!(d.len(), 3);
        for id in ["a", "b", "c"] {
            assert!(is_duplicate(d.claim(id, 2000)), "{id}");
        }
        for id in ["zeroed", "flipped", "garbage"] {
            new(d.claim(id, 2000));
        }
    }

    #[test]
    fn records_under_another_key_are_not_trusted() {
        let (dir, mut bytes) = journal_of(&["mine"]);
        let (_other, theirs) = journal_of(&["theirs", "mine"]);
        // Their records after our header: whole, CRC-checked, but not under our key.
        bytes.extend_from_slice(&theirs[HEADER_LEN..]);
        std::fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let d = open(dir.path(), DAY, 100, 2000);
        assert_eq!(d.len(), 1);
        assert!(is_duplicate(d.claim("mine", 2000)));
        new(d.claim("theirs", 2000));
    }

    #[test]
    fn a_damaged_header_forgets_the_ids_and_starts_a_new_journal() {
        let (dir, mut bytes) = journal_of(&["a", "b"]);
        bytes[14] ^= 1; // in the key
        std::fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let d = open(dir.path(), DAY, 100, 2000);
        assert!(d.is_empty());
        new(d.claim("a", 2000));
        store(&d, "c", 2000);
        d.close();
        let d = open(dir.path(), DAY, 100, 3000);
        assert_eq!(d.len(), 1);
        assert!(is_duplicate(d.claim("c", 3000)));
    }

    #[test]
    fn a_journal_of_another_version_is_refused_and_left_alone() {
        let (dir, mut bytes) = journal_of(&["a"]);
        bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let err = Dedup::open(Arc::new(RealFs), dir.path(), DAY, 100, 2000)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("version 4"), "{err}");
        assert_eq!(journal(dir.path()), bytes);
    }

    #[test]
    fn a_text_journal_is_read_once_and_rewritten_in_the_binary_format() {
        for (version, text) in [
            // hookbridge 0.1's first format: no header, no CRC.
            (1, "5000 good\n17 \nxx yy\n9000 torn".to_owned()),
            (
                2,
                [
                    String::from_utf8(V2_HEADER.to_vec()).unwrap(),
                    v2_line(5000, "good"),
                    v2_line(5000, "flipped").replace("5000 f", "5000 g"),
                    "7000 nocrc\n".to_owned(),
                    v2_line(0, "expired"),
                    v2_line(9000, "torn").trim_end().to_owned(),
                ]
                .concat(),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
            let window = Duration::from_secs(3600);
            let d = open(dir.path(), window, 100, 3_600_001);
            assert_eq!(d.len(), 1, "v{version}");
            assert!(is_duplicate(d.claim("good", 3_600_001)), "v{version}");
            for id in ["yy", "torn", "flipped", "glipped", "nocrc", "expired"] {
                new(d.claim(id, 3_600_001));
            }
            d.close();
            let bytes = journal(dir.path());
            assert_eq!(&bytes[..8], &MAGIC, "v{version}");
            assert_eq!(bytes.len(), HEADER_LEN + RECORD_LEN, "v{version}");
            // The upgrade forgot nothing: "good" survives the next restart too.
            let d = open(dir.path(), window, 100, 3_600_002);
            assert!(is_duplicate(d.claim("good", 3_600_002)), "v{version}");
        }
    }

    #[test]
    fn without_a_writable_journal_ids_are_remembered_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let d = Arc::new(Dedup::open(Arc::new(RealFs), &missing, DAY, 100, 0).unwrap());
        store(&d, "a", 1);
        assert!(is_duplicate(d.claim("a", 2)));
        assert_eq!(d.journal_bytes(), 0);
        d.close();
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
            store(&d, &format!("id{i}"), t0 + i * 1000);
        }
        d.close();
        let bytes = journal(dir.path());
        let records = (bytes.len() - HEADER_LEN) / RECORD_LEN;
        assert!(
            records < COMPACT_SLACK + 2 * max,
            "{records} records: not compacted"
        );
        assert!(!dir.path().join(JOURNAL_TMP_FILE).exists());
        let now = t0 + n * 1000;
        let d = open(dir.path(), DAY, max, now);
        assert_eq!(d.len(), max);
        assert!(is_duplicate(d.claim(&format!("id{}", n - 1), now)));
        new(d.claim(&format!("id{}", n - 1 - max as u64), now));
    }
}
