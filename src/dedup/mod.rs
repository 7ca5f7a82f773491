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
//! # Where the rest lives
//!
//! - `fingerprint.rs`: an id is remembered as a keyed 128-bit fingerprint, never as itself;
//! - `set.rs`: the stored set, a ring in insertion order plus an index, with expiry and eviction;
//! - `journal.rs`: the binary journal (`<spool.dir>/dedup.journal`) that carries stored ids
//!   across a restart, its writer thread, compaction, and the upgrade of text journals.

mod fingerprint;
mod journal;
mod set;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::spool::SpoolFs;
use fingerprint::{Fingerprint, FirstWord, Key};
pub use journal::JOURNAL_FILE;
use journal::{push_record, Queue};
pub use set::MAX_ENTRIES;
use set::{live, secs_of, Remembered};

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
    /// Opens the journal in `dir` and loads the ids still inside the window at `clock`'s wall
    /// time, which the journal's compaction reads too (claims and commits are given their time
    /// by the caller). Blocking. `max_entries` is capped at [`MAX_ENTRIES`]. Fails on an I/O
    /// error or a journal of an unknown format version (which it leaves as it is).
    pub fn open(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        window: Duration,
        max_entries: usize,
        clock: Clock,
    ) -> io::Result<Dedup> {
        let window_ms = window.as_millis() as u64;
        let max_entries = max_entries.min(MAX_ENTRIES);
        let journal = journal::open(fs, dir, window_ms, max_entries, clock)?;
        Ok(Dedup {
            window_ms,
            key: journal.key,
            state: Mutex::new(State {
                remembered: journal.remembered,
                pending: HashMap::default(),
            }),
            journal: journal.queue,
            journal_thread: Mutex::new(journal.thread),
            journal_bytes: journal.bytes,
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

    /// Claims `id` of the default endpoint; see [`Dedup::claim_in`].
    pub fn claim(self: &Arc<Self>, id: &str, now_ms: u64) -> Claim {
        self.claim_in(None, id, now_ms)
    }

    /// Claims `id`, delivered through `endpoint` (`None`: the default), for storing, unless it
    /// was stored within the window or is being stored. Ids are remembered per endpoint.
    pub fn claim_in(self: &Arc<Self>, endpoint: Option<&str>, id: &str, now_ms: u64) -> Claim {
        let fingerprint = self.key.fingerprint_in(endpoint, id);
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

/// The state behind these locks stays consistent at every unlock: a panic elsewhere cannot leave
/// it torn.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
