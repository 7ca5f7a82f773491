//! An in-memory filesystem that models what survives a power cut.
//!
//! Per file (inode) it keeps the live bytes and the bytes made durable by the last completed
//! `sync_data`/`sync_all`; per directory the live entries and the entries made durable by the
//! last completed `sync_dir`. A cut keeps only durable state: directory entries revert to their
//! last synced set (a file or directory reachable only through an unsynced entry is gone), file
//! contents revert to their last synced bytes, except that bytes appended after the last sync
//! may survive in part: an arbitrary prefix, whose end is sometimes garbage or zeros (a torn
//! page), or all of them except some 4 KiB pages that read back as zeros (writeback out of
//! order). Unsynced overwrites of synced bytes (frames written into a segment's preallocated
//! zeros) survive page by page: each 4 KiB page whole, not at all, or torn at some byte. A
//! truncation that was not synced is undone. A file's contents are tracked by inode, so a synced file renamed into place without a
//! directory sync survives under its old name (or not at all), as on a real filesystem.
//!
//! The cut is armed at a mutating-operation index: that operation and every later one on this
//! instance fail with EIO (reads too), which stops the spool that was running on it as a
//! machine losing power would; [`MemFs::survivor`] then hands out the post-cut filesystem.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hookbridge::spool::{DirEntry, DirLock, FsFile, SpoolFs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

/// What the mutating operation that met the cut was doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPoint {
    pub op: &'static str,
    pub path: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    /// Mutating operations performed so far.
    ops: u64,
    /// The cut happens at this mutating operation.
    cut_at: Option<u64>,
    /// Set once the cut happened: what it interrupted and the surviving filesystem.
    cut: Option<(CutPoint, MemFs)>,
    rng: u64,
    /// Directories whose lock is held.
    locked: Vec<PathBuf>,
}

/// The simulated filesystem. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

/// What every operation returns once the power is gone.
fn eio() -> io::Error {
    io::Error::from_raw_os_error(5) // EIO on Linux
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().ok_or_else(|| not_found(path))?;
    let name = path
        .file_name()
        .ok_or_else(|| not_found(path))?
        .to_string_lossy()
        .into_owned();
    Ok((parent.to_path_buf(), name))
}

impl State {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed, good enough to pick prefixes.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The current name of inode `ino` (a handle's path may be a name it was renamed from).
    fn name_of(&self, ino: u64, fallback: &Path) -> PathBuf {
        self.dirs
            .iter()
            .find_map(|(dir, d)| {
                d.live
                    .iter()
                    .find(|(_, n)| **n == Node::File(ino))
                    .map(|(name, _)| dir.join(name))
            })
            .unwrap_or_else(|| fallback.to_path_buf())
    }

    /// `mutate` for an operation through a file handle.
    fn mutate_file(&mut self, op: &'static str, ino: u64, path: &Path) -> io::Result<()> {
        let path = self.name_of(ino, path);
        self.mutate(op, &path)
    }

    /// Counts a mutating operation and fires the cut if it is due.
    fn mutate(&mut self, op: &'static str, path: &Path) -> io::Result<()> {
        if self.cut.is_some() {
            return Err(eio());
        }
        if self.cut_at == Some(self.ops) {
            let survivor = self.survive();
            self.cut = Some((
                CutPoint {
                    op,
                    path: path.to_path_buf(),
                },
                survivor,
            ));
            return Err(eio());
        }
        self.ops += 1;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        match self.cut {
            Some(_) => Err(eio()),
            None => Ok(()),
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<Node> {
        if self.dirs.contains_key(path) && path.parent().is_none() {
            return Ok(Node::Dir);
        }
        let (parent, name) = split(path)?;
        self.dirs
            .get(&parent)
            .and_then(|d| d.live.get(&name).copied())
            .ok_or_else(|| not_found(path))
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            Node::File(ino) => Ok(ino),
            Node::Dir => Err(io::Error::other("is a directory")),
        }
    }

    /// The filesystem as it comes back after losing power now.
    fn survive(&mut self) -> MemFs {
        let mut dirs: BTreeMap<PathBuf, Dir> = BTreeMap::new();
        // Parents sort before their children, so a directory is kept only if its parent was
        // and the parent's durable entries name it.
        let paths: Vec<PathBuf> = self.dirs.keys().cloned().collect();
        for p in paths {
            let keep = match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => dirs
                    .get(parent)
                    .is_some_and(|d| d.durable.get(&*name.to_string_lossy()) == Some(&Node::Dir)),
                _ => true, // the root
            };
            if keep {
                let d = &self.dirs[&p];
                dirs.insert(
                    p,
                    Dir {
                        live: d.durable.clone(),
                        durable: d.durable.clone(),
                    },
                );
            }
        }
        let mut inodes = HashMap::new();
        let referenced: Vec<u64> = dirs
            .values()
            .flat_map(|d| d.live.values())
            .filter_map(|n| match n {
                Node::File(ino) => Some(*ino),
                Node::Dir => None,
            })
            .collect();
        for ino in referenced {
            let old = self.inodes[&ino].clone();
            let mut data = old.durable.clone();
            // Unsynced overwrites of durable bytes (a segment's preallocated zeros taking
            // frames): each 4 KiB page reached the disk whole, not at all, or torn at some byte.
            let common = data.len().min(old.data.len());
            let mut page = 0;
            while page < common {
                let end = (page + 4096).min(common);
                if old.data[page..end] != data[page..end] {
                    let new = &old.data[page..end];
                    match self.next_random() % 3 {
                        0 => {}
                        1 => data[page..end].copy_from_slice(new),
                        _ => {
                            let k = (self.next_random() % (end - page) as u64) as usize;
                            data[page..page + k].copy_from_slice(&new[..k]);
                        }
                    }
                }
                page = end;
            }
            if old.data.len() > data.len() {
                // Unsynced appended bytes: some prefix may have reached the disk, and a torn
                // page may hold garbage instead.
                let extra = old.data.len() - data.len();
                let start = data.len();
                if self.next_random().is_multiple_of(4) {
                    // Writeback out of order: the whole tail made it except some 4 KiB pages,
                    // which read back as zeros — valid frames may follow a hole.
                    data.extend_from_slice(&old.data[start..]);
                    let mut page = start / 4096 * 4096;
                    while page < data.len() {
                        if self.next_random().is_multiple_of(3) {
                            let end = (page + 4096).min(data.len());
                            data[page.max(start)..end].fill(0);
                        }
                        page += 4096;
                    }
                    inodes.insert(
                        ino,
                        Inode {
                            data: data.clone(),
                            durable: data,
                        },
                    );
                    continue;
                }
                let keep = (self.next_random() % (extra as u64 + 1)) as usize;
                data.extend_from_slice(&old.data[start..start + keep]);
                if keep > 0 {
                    // A quarter of the time the tail of what survives is garbage, a quarter
                    // zeros (the size reached the journal, the data blocks did not).
                    let from = start + (self.next_random() % keep as u64) as usize;
                    match self.next_random() % 4 {
                        0 => {
                            for b in &mut data[from..] {
                                *b = self.next_random() as u8;
                            }
                        }
                        1 => data[from..].fill(0),
                        _ => {}
                    }
                }
            }
            inodes.insert(
                ino,
                Inode {
                    data: data.clone(),
                    durable: data,
                },
            );
        }
        MemFs {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_ino: self.next_ino,
                dirs,
                rng: self.next_random() | 1,
                ..State::default()
            })),
        }
    }
}

impl MemFs {
    /// An empty filesystem holding only `root` (durable). `seed` drives the torn-write choices.
    pub fn new(root: &Path, seed: u64) -> MemFs {
        let mut dirs = BTreeMap::new();
        for a in root.ancestors() {
            dirs.insert(a.to_path_buf(), Dir::default());
        }
        // Link each ancestor into its parent, durably.
        for a in root.ancestors() {
            if let (Some(parent), Some(name)) = (a.parent(), a.file_name()) {
                let d = dirs.get_mut(parent).expect("ancestor");
                let name = name.to_string_lossy().into_owned();
                d.live.insert(name.clone(), Node::Dir);
                d.durable.insert(name, Node::Dir);
            }
        }
        MemFs {
            state: Arc::new(Mutex::new(State {
                dirs,
                rng: seed | 1,
                ..State::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Power is cut at the `n`-th mutating operation from now (0: the very next one).
    pub fn arm_cut(&self, n: u64) {
        let mut s = self.lock();
        let at = s.ops + n;
        s.cut_at = Some(at);
    }

    /// Cuts power now, if it was not cut yet.
    pub fn cut_now(&self) {
        let mut s = self.lock();
        if s.cut.is_none() {
            let survivor = s.survive();
            s.cut = Some((
                CutPoint {
                    op: "idle",
                    path: PathBuf::new(),
                },
                survivor,
            ));
        }
    }

    /// What the cut interrupted and the filesystem that survived it, once the cut happened.
    pub fn survivor(&self) -> Option<(CutPoint, MemFs)> {
        self.lock().cut.clone()
    }
}

#[derive(Debug)]
struct MemFile {
    fs: MemFs,
    ino: u64,
    path: PathBuf,
    writable: bool,
}

impl FsFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.fs.lock();
        s.check()?;
        Ok(s.inodes[&self.ino].data.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.fs.lock();
        s.check()?;
        let data = &s.inodes[&self.ino].data;
        let start = offset as usize;
        let end = start + buf.len();
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        assert!(self.writable, "write through a read-only handle");
        let mut s = self.fs.lock();
        s.mutate_file("write", self.ino, &self.path)?;
        let data = &mut s.inodes.get_mut(&self.ino).expect("inode").data;
        let end = offset as usize + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.mutate_file("sync_data", self.ino, &self.path)?;
        let inode = s.inodes.get_mut(&self.ino).expect("inode");
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.mutate_file("sync_all", self.ino, &self.path)?;
        let inode = s.inodes.get_mut(&self.ino).expect("inode");
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.mutate_file("set_len", self.ino, &self.path)?;
        s.inodes
            .get_mut(&self.ino)
            .expect("inode")
            .data
            .resize(len as usize, 0);
        Ok(())
    }
}

/// Releases the directory lock when the spool drops it.
struct MemLock {
    fs: MemFs,
    dir: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.fs.lock().locked.retain(|d| d != &self.dir);
    }
}

impl MemFs {
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn FsFile>> {
        let s = self.lock();
        s.check()?;
        let ino = s.file(path)?;
        Ok(Box::new(MemFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
            writable,
        }))
    }
}

impl SpoolFs for MemFs {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, false)
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, true)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut s = self.lock();
        s.mutate("create", path)?;
        let ino = match s.lookup(path) {
            Ok(Node::File(ino)) => {
                s.inodes.get_mut(&ino).expect("inode").data.clear();
                ino
            }
            Ok(Node::Dir) => return Err(io::Error::other("is a directory")),
            Err(_) => {
                let (parent, name) = split(path)?;
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.dirs
                    .get_mut(&parent)
                    .ok_or_else(|| not_found(&parent))?
                    .live
                    .insert(name, Node::File(ino));
                ino
            }
        };
        Ok(Box::new(MemFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
            writable: true,
        }))
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        let mut s = self.lock();
        s.check()?;
        if s.locked.iter().any(|d| d == dir) {
            return Ok(None);
        }
        s.locked.push(dir.to_path_buf());
        Ok(Some(DirLock::new(MemLock {
            fs: self.clone(),
            dir: dir.to_path_buf(),
        })))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate("sync_dir", dir)?;
        let d = s.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
        d.durable = d.live.clone();
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        let s = self.lock();
        s.check().is_ok() && matches!(s.lookup(path), Ok(Node::Dir))
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.check().is_ok() && s.lookup(path).is_ok()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate("create_dir", path)?;
        if s.lookup(path).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let (parent, name) = split(path)?;
        s.dirs
            .get_mut(&parent)
            .ok_or_else(|| not_found(&parent))?
            .live
            .insert(name, Node::Dir);
        s.dirs.insert(path.to_path_buf(), Dir::default());
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate("rename", to)?;
        let node = s.lookup(from)?;
        assert_eq!(
            node,
            Node::File(s.file(from)?),
            "the spool renames only files"
        );
        let (fp, fname) = split(from)?;
        let (tp, tname) = split(to)?;
        s.dirs.get_mut(&fp).expect("parent").live.remove(&fname);
        s.dirs
            .get_mut(&tp)
            .ok_or_else(|| not_found(&tp))?
            .live
            .insert(tname, node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate("remove_file", path)?;
        s.file(path)?;
        let (parent, name) = split(path)?;
        s.dirs.get_mut(&parent).expect("parent").live.remove(&name);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let s = self.lock();
        s.check()?;
        let d = s.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        Ok(d.live
            .iter()
            .map(|(name, node)| match node {
                Node::File(ino) => DirEntry {
                    name: name.clone(),
                    is_file: true,
                    len: s.inodes[ino].data.len() as u64,
                },
                Node::Dir => DirEntry {
                    name: name.clone(),
                    is_file: false,
                    len: 0,
                },
            })
            .collect())
    }

    fn free_bytes(&self, _path: &Path) -> io::Result<u64> {
        self.lock().check()?;
        Ok(u64::MAX / 2)
    }
}
