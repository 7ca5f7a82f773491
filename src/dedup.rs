//! Replay protection: remembers delivery ids for `auth.dedup_window` so the sender's retries of
//! a delivery hookbridge already stored are acknowledged without being stored (and published)
//! again.
//!
//! Bounded: at most `auth.dedup_max_entries` ids, the oldest forgotten first. Survives a restart
//! through a journal beside the spool (`<spool.dir>/dedup.journal`, one `<ms> <id>` line per
//! stored delivery, compacted when mostly expired). Journal lines are written (not fsync'd) when
//! a delivery is stored: they survive a crash of the process, and a power cut loses at most the
//! last few seconds of ids — which only means a retry of those is published twice, still within
//! the at-least-once promise (and JetStream's own de-duplication window).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub const JOURNAL_FILE: &str = "dedup.journal";

pub struct Dedup {
    window_ms: u64,
    max_entries: usize,
    state: Mutex<State>,
}

struct State {
    /// id → when it was stored (ms); `u64::MAX` while the append is in progress.
    seen: HashMap<String, u64>,
    /// Insertion order, for expiry and eviction. May hold stale entries (released or
    /// re-inserted ids); those are skipped when popped.
    order: VecDeque<(u64, String)>,
    journal: File,
    journal_path: PathBuf,
    journal_lines: usize,
}

/// What [`Dedup::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen within the window: go ahead and store it, then [`Dedup::commit`] or
    /// [`Dedup::release`].
    New,
    /// Stored before within the window (or being stored right now by a concurrent request).
    Duplicate,
}

impl Dedup {
    /// Opens the journal in `dir` and loads the ids still inside the window. Blocking.
    pub fn open(
        dir: &Path,
        window: Duration,
        max_entries: usize,
        now_ms: u64,
    ) -> io::Result<Dedup> {
        let window_ms = window.as_millis() as u64;
        let path = dir.join(JOURNAL_FILE);
        let mut seen = HashMap::new();
        let mut order = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (crash mid-write) or garbage is skipped: losing an id only
                // weakens de-duplication, never the delivery promise.
                let Some((ts, id)) = line.split_once(' ') else {
                    continue;
                };
                let (Ok(ts), false) = (ts.parse::<u64>(), id.is_empty()) else {
                    continue;
                };
                if ts.saturating_add(window_ms) < now_ms {
                    continue;
                }
                seen.insert(id.to_owned(), ts);
                order.push_back((ts, id.to_owned()));
            }
        }
        let mut state = State {
            seen,
            order,
            journal: open_append(&path)?,
            journal_path: path,
            journal_lines: 0,
        };
        state.evict(now_ms, window_ms, max_entries);
        // Best effort: on a full disk the rewrite fails, and the bridge must still start (it is
        // what drains the spool and frees the space).
        if let Err(e) = state.compact() {
            tracing::warn!(error = %e, "compacting the de-duplication journal failed; keeping it as it is");
        }
        Ok(Dedup {
            window_ms,
            max_entries,
            state: Mutex::new(state),
        })
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `id` as being stored, unless it was stored within the window.
    pub fn claim(&self, id: &str, now_ms: u64) -> Claim {
        let mut s = self.state.lock().unwrap();
        s.evict(now_ms, self.window_ms, self.max_entries);
        match s.seen.get(id) {
            Some(&ts) if ts == u64::MAX || ts.saturating_add(self.window_ms) >= now_ms => {
                Claim::Duplicate
            }
            _ => {
                s.seen.insert(id.to_owned(), u64::MAX);
                Claim::New
            }
        }
    }

    /// The delivery was stored: remember it from `now_ms` on, and journal it.
    pub fn commit(&self, id: &str, now_ms: u64) {
        let mut s = self.state.lock().unwrap();
        s.seen.insert(id.to_owned(), now_ms);
        s.order.push_back((now_ms, id.to_owned()));
        let line = format!("{now_ms} {id}\n");
        if let Err(e) = s.journal.write_all(line.as_bytes()) {
            // De-duplication degrades to the broker's; deliveries are unaffected.
            tracing::warn!(error = %e, "writing the de-duplication journal failed");
        }
        s.journal_lines += 1;
        if s.journal_lines > 2 * s.seen.len() + 10_000 {
            if let Err(e) = s.compact() {
                tracing::warn!(error = %e, "compacting the de-duplication journal failed");
            }
        }
    }

    /// The delivery was not stored (the spool refused it): forget the claim so a retry works.
    pub fn release(&self, id: &str) {
        let mut s = self.state.lock().unwrap();
        if s.seen.get(id) == Some(&u64::MAX) {
            s.seen.remove(id);
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

    /// Rewrites the journal with only the live ids (temp file + rename).
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.journal_path.with_extension("journal.tmp");
        {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            for (ts, id) in &self.order {
                if self.seen.get(id) == Some(ts) {
                    writeln!(f, "{ts} {id}")?;
                }
            }
            f.into_inner()?.sync_all()?;
        }
        fs::rename(&tmp, &self.journal_path)?;
        self.journal = open_append(&self.journal_path)?;
        self.journal_lines = self.seen.len();
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn claim_commit_duplicate_release() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dedup::open(dir.path(), Duration::from_secs(24 * 3600), 100, 0).unwrap();
        assert_eq!(d.claim("a", 1), Claim::New);
        // A concurrent retry while the first is being stored is a duplicate too.
        assert_eq!(d.claim("a", 2), Claim::Duplicate);
        d.commit("a", 3);
        assert_eq!(d.claim("a", 4), Claim::Duplicate);
        assert_eq!(d.claim("b", 5), Claim::New);
        d.release("b");
        assert_eq!(
            d.claim("b", 6),
            Claim::New,
            "a refused delivery can be retried"
        );
    }

    #[test]
    fn window_expiry_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dedup::open(dir.path(), Duration::from_secs(24 * 3600), 100, 0).unwrap();
        for (id, t) in [("old", 0), ("new", 20 * H)] {
            assert_eq!(d.claim(id, t), Claim::New);
            d.commit(id, t);
        }
        drop(d);
        let d = Dedup::open(dir.path(), Duration::from_secs(24 * 3600), 100, 25 * H).unwrap();
        assert_eq!(d.len(), 1, "the expired id is not reloaded");
        assert_eq!(d.claim("new", 25 * H), Claim::Duplicate);
        assert_eq!(d.claim("old", 25 * H), Claim::New);
    }

    #[test]
    fn bounded_oldest_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dedup::open(dir.path(), Duration::from_secs(24 * 3600), 3, 0).unwrap();
        for i in 0..5u64 {
            assert_eq!(d.claim(&format!("id{i}"), i), Claim::New);
            d.commit(&format!("id{i}"), i);
        }
        assert_eq!(d.claim("id4", 10), Claim::Duplicate);
        assert!(d.len() <= 4);
        assert_eq!(d.claim("id0", 10), Claim::New, "oldest evicted");
    }

    #[test]
    fn torn_journal_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            "5 good\n17 \nxx yy\n9 torn-without-newline",
        )
        .unwrap();
        let d = Dedup::open(dir.path(), Duration::from_secs(3600), 100, 10).unwrap();
        assert_eq!(d.claim("good", 10), Claim::Duplicate);
        assert_eq!(d.claim("yy", 10), Claim::New);
    }
}
