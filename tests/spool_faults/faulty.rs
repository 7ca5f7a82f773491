//! A filesystem wrapper that fails chosen operations and can report low free space.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use hookbridge::spool::{DelegatingFs, FsFile, SpoolFs};

pub const EIO: i32 = 5;
pub const ENOSPC: i32 = 28;

/// Operations a rule can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Write,
    SyncData,
    SyncAll,
    SyncDir,
    Rename,
    Remove,
}

/// Fail the `nth` (1-based, counted from when the rule is added) `op` on a path containing
/// `path_contains`, once, with `errno`.
#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    path_contains: String,
    nth: u64,
    seen: u64,
    errno: i32,
    fired: bool,
}

/// Block the next `op` on a matching path until the test decides how it ends.
#[derive(Debug, Clone)]
struct Hold {
    op: Op,
    path_contains: String,
    /// An operation is blocked on it now.
    waiting: bool,
    /// Set by `release`: `Some(errno)` fails the held operation, `None` lets it proceed.
    verdict: Option<Option<i32>>,
}

#[derive(Debug, Default)]
struct State {
    hold: Option<Hold>,
    rules: Vec<Rule>,
    /// Every operation that reached the inner filesystem: (op, path).
    log: Vec<(Op, PathBuf)>,
    /// Reported free space, less what was written through this filesystem since it was set.
    free: Option<u64>,
    /// Calls of `free_bytes` (statvfs samples).
    free_calls: u64,
}

#[derive(Clone)]
pub struct FaultFs {
    inner: Arc<dyn SpoolFs>,
    state: Arc<Mutex<State>>,
    /// Signalled whenever a hold changes.
    held: Arc<Condvar>,
}

impl FaultFs {
    pub fn new(inner: Arc<dyn SpoolFs>) -> FaultFs {
        FaultFs {
            inner,
            state: Arc::default(),
            held: Arc::default(),
        }
    }

    /// Blocks the next `op` on a path containing `path_contains` (in whichever thread performs
    /// it: the spool writer, say) until [`FaultFs::release`]: a slow disk, on cue.
    pub fn hold(&self, op: Op, path_contains: &str) {
        self.lock().hold = Some(Hold {
            op,
            path_contains: path_contains.to_owned(),
            waiting: false,
            verdict: None,
        });
    }

    /// Whether an operation is blocked on the hold right now.
    pub fn is_holding(&self) -> bool {
        self.lock().hold.as_ref().is_some_and(|h| h.waiting)
    }

    /// Lets the held operation go on; with `Some(errno)` it fails with that error instead.
    pub fn release(&self, fail: Option<i32>) {
        if let Some(h) = &mut self.lock().hold {
            h.verdict = Some(fail);
        }
        self.held.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail(&self, op: Op, path_contains: &str, nth: u64, errno: i32) {
        self.lock().rules.push(Rule {
            op,
            path_contains: path_contains.to_owned(),
            nth,
            seen: 0,
            errno,
            fired: false,
        });
    }

    /// Whether every rule has fired.
    pub fn all_fired(&self) -> bool {
        self.lock().rules.iter().all(|r| r.fired)
    }

    /// Operations that reached the inner filesystem so far.
    pub fn ops(&self) -> Vec<(Op, PathBuf)> {
        self.lock().log.clone()
    }

    /// Report `bytes` free from now on, shrinking with every byte written.
    pub fn set_free(&self, bytes: u64) {
        self.lock().free = Some(bytes);
    }

    /// How many times the spool asked for the free space (statvfs samples).
    pub fn free_calls(&self) -> u64 {
        self.lock().free_calls
    }

    fn before(&self, op: Op, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let p = path.to_string_lossy();
        let hit = |h: &Hold| !h.waiting && h.op == op && p.contains(&h.path_contains);
        if s.hold.as_ref().is_some_and(hit) {
            s.hold.as_mut().unwrap().waiting = true;
            s = self
                .held
                .wait_while(s, |s| s.hold.as_ref().is_some_and(|h| h.verdict.is_none()))
                .unwrap_or_else(|e| e.into_inner());
            if let Some(Some(errno)) = s.hold.take().and_then(|h| h.verdict) {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        for r in &mut s.rules {
            if r.fired || r.op != op || !p.contains(&r.path_contains) {
                continue;
            }
            r.seen += 1;
            if r.seen == r.nth {
                r.fired = true;
                return Err(io::Error::from_raw_os_error(r.errno));
            }
        }
        s.log.push((op, path.to_path_buf()));
        Ok(())
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn FsFile>,
    path: PathBuf,
    fs: FaultFsRef,
}

/// `FaultFs` without the `Debug` requirement on the inner filesystem.
#[derive(Clone)]
struct FaultFsRef(FaultFs);

impl std::fmt::Debug for FaultFsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultFs")
    }
}

impl FsFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fs.0.before(Op::Write, &self.path)?;
        self.inner.write_all_at(buf, offset)?;
        if let Some(free) = &mut self.fs.0.lock().free {
            *free = free.saturating_sub(buf.len() as u64);
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.0.before(Op::SyncData, &self.path)?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.fs.0.before(Op::SyncAll, &self.path)?;
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl FaultFs {
    fn wrap(&self, inner: Box<dyn FsFile>, path: &Path) -> Box<dyn FsFile> {
        Box::new(FaultFile {
            inner,
            path: path.to_path_buf(),
            fs: FaultFsRef(self.clone()),
        })
    }
}

impl DelegatingFs for FaultFs {
    fn inner(&self) -> &dyn SpoolFs {
        &*self.inner
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(self.wrap(self.inner.open_read(path)?, path))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(self.wrap(self.inner.open_write(path)?, path))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.before(Op::Create, path)?;
        Ok(self.wrap(self.inner.create(path)?, path))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.before(Op::SyncDir, dir)?;
        self.inner.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.before(Op::Rename, to)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.before(Op::Remove, path)?;
        self.inner.remove_file(path)
    }
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let mut state = self.lock();
        state.free_calls += 1;
        match state.free {
            Some(free) => Ok(free),
            None => self.inner.free_bytes(path),
        }
    }
}
