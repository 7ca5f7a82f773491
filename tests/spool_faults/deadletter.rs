//! The dead-letter store on the spool's filesystem seam: injected errors in every step of a
//! `put`, and a power cut at every mutating operation of a small workload.
//!
//! What a dead letter promises: `put` returning `Ok` means the file survives a crash with its
//! exact bytes; a `put` that failed or was cut leaves the record either absent (or its previous
//! version) or complete, never a partial file that reads as a dead letter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hookbridge::deadletter::{DeadLetters, Meta};
use hookbridge::spool::{RealFs, SpoolFs};

use crate::faulty::{FaultFs, Op, EIO, ENOSPC};
use crate::memfs::MemFs;

fn meta(seq: u64, reason: &str) -> Meta {
    Meta {
        seq,
        id: format!("msg_{seq}"),
        action: "session.updated".into(),
        destination: "sb.session.updated".into(),
        reason: reason.into(),
        error: format!("{reason} (permanent): refused"),
        dead_lettered_at_ms: 1_700_000_000_000 + seq,
    }
}

/// A payload for `seq`, distinct per `version`, over two 4 KiB pages so a torn write can lose a
/// page in the middle.
fn payload(seq: u64, version: u8) -> Vec<u8> {
    (0..9000u32)
        .map(|i| (i as u64 * 7 + seq * 31 + version as u64 * 101) as u8)
        .collect()
}

/// A dead letter as read back: its metadata and payload.
type Record = (Meta, Vec<u8>);

/// Every dead letter the store shows, read whole. Panics on a file that is not a complete dead
/// letter.
fn contents(dl: &DeadLetters) -> BTreeMap<u64, Record> {
    dl.list()
        .expect("list")
        .into_iter()
        .map(|m| {
            let m = m.expect("a visible dead letter is complete");
            let (meta, p) = dl.get(m.seq).expect("get").expect("listed, so present");
            assert_eq!(meta, m);
            (m.seq, (meta, p.to_vec()))
        })
        .collect()
}

fn names(fs: &dyn SpoolFs, dir: &Path) -> Vec<String> {
    fs.list_dir(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[test]
fn a_failed_put_returns_the_error_and_leaves_no_partial_dead_letter() {
    // Each step of the crash-safe replace: tmp file, its write, its fsync, the rename, the
    // directory fsync.
    for (op, on, errno) in [
        (Op::Create, ".dl.tmp", EIO),
        (Op::Write, ".dl.tmp", ENOSPC),
        (Op::SyncAll, ".dl.tmp", EIO),
        (Op::Rename, ".dl", EIO),
        (Op::SyncDir, "dead-letter", EIO),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new(Arc::new(RealFs));
        let dl = DeadLetters::open_with_fs(dir.path(), Arc::new(fs.clone())).unwrap();
        let one = (meta(1, "message_too_large"), payload(1, 0));
        let two = (meta(2, "invalid_json"), payload(2, 0));
        dl.put(&one.0, &one.1).unwrap();

        fs.fail(op, on, 1, errno);
        let err = dl.put(&two.0, &two.1).expect_err("the fault fails the put");
        assert!(fs.all_fired(), "{op:?}: the fault was not hit");
        assert!(
            err.to_string().contains("dead-letter store"),
            "{op:?}: {err}"
        );

        // Only whole records are visible: seq 2 only when the fault came after its rename.
        let seen = contents(&dl);
        let mut want = BTreeMap::from([(1, one.clone())]);
        if op == Op::SyncDir {
            want.insert(2, two.clone());
        }
        assert_eq!(seen, want, "{op:?}");
        assert_eq!(dl.len(), seen.len() as u64, "{op:?}: count");

        // Putting it again is the retry; then a restart on the real filesystem finds both,
        // byte-exact, and no temporary file.
        dl.put(&two.0, &two.1).unwrap();
        assert_eq!(dl.len(), 2, "{op:?}");
        drop(dl);
        let dl = DeadLetters::open(dir.path()).unwrap();
        assert_eq!(dl.len(), 2, "{op:?}");
        assert_eq!(
            contents(&dl),
            BTreeMap::from([(1, one), (2, two)]),
            "{op:?}"
        );
        for name in names(&RealFs, dl.dir()) {
            assert!(name.ends_with(".dl"), "{op:?}: {name} left behind");
        }
    }
}

#[test]
fn a_failed_open_or_remove_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(RealFs));
    // Creating the store fsyncs the spool directory that gained it.
    fs.fail(Op::SyncDir, "", 1, EIO);
    assert!(DeadLetters::open_with_fs(dir.path(), Arc::new(fs.clone())).is_err());
    let dl = DeadLetters::open_with_fs(dir.path(), Arc::new(fs.clone())).unwrap();
    dl.put(&meta(1, "invalid_topic"), &payload(1, 0)).unwrap();
    fs.fail(Op::Remove, ".dl", 1, EIO);
    assert!(dl.remove(1).is_err());
    assert_eq!(dl.len(), 1);
    assert!(dl.remove(1).unwrap());
    assert!(dl.is_empty());
}

/// One step of the power-cut workload.
#[derive(Debug, Clone)]
enum Step {
    Put(u64, u8),
    Remove(u64),
}

const ROOT: &str = "/power";

fn spool_dir() -> PathBuf {
    // A subdirectory, so opening the store creates two directories under the model.
    PathBuf::from(ROOT).join("spool")
}

#[test]
fn power_cut_at_every_operation_keeps_every_acknowledged_dead_letter_whole() {
    // Puts, a replacement of an existing record (a new version of seq 1), a remove, and a put
    // after it.
    let workload = [
        Step::Put(1, 0),
        Step::Put(2, 0),
        Step::Put(1, 1),
        Step::Remove(2),
        Step::Put(3, 0),
    ];
    let mut cut_ops = BTreeSet::new();
    let mut cut_at = 0;
    loop {
        let mut finished = false;
        for seed in 0..6 {
            finished |= cut_and_check(&workload, cut_at, seed, &mut cut_ops);
        }
        if finished {
            break;
        }
        cut_at += 1;
        assert!(cut_at < 1000, "the workload never finished");
    }
    // The cut landed in every kind of step the store takes.
    for op in [
        "create_dir",
        "create",
        "write",
        "sync_all",
        "rename",
        "sync_dir",
        "remove_file",
    ] {
        assert!(cut_ops.contains(op), "no cut at a {op}: {cut_ops:?}");
    }
}

/// Runs `workload` with power cut at mutating operation `cut_at`, then reopens what survived.
/// Returns whether the workload finished before the cut.
fn cut_and_check(
    workload: &[Step],
    cut_at: u64,
    seed: u64,
    cut_ops: &mut BTreeSet<&'static str>,
) -> bool {
    let fs = MemFs::new(Path::new(ROOT), seed);
    fs.arm_cut(cut_at);
    let payload_of = |seq, v| (meta(seq, "message_too_large"), payload(seq, v));
    // Per seq, what may be there after the cut (`None`: absent). An acknowledged step narrows
    // it to its result; a cut step adds its result to what was possible before.
    let mut allowed: BTreeMap<u64, Vec<Option<Record>>> = BTreeMap::new();
    let ctx = format!("cut at op {cut_at}, seed {seed}");
    if let Ok(dl) = DeadLetters::open_with_fs(&spool_dir(), Arc::new(fs.clone())) {
        for step in workload {
            let (seq, after, result) = match step {
                Step::Put(seq, v) => {
                    let rec = payload_of(*seq, *v);
                    let r = dl.put(&rec.0, &rec.1).map(drop);
                    (*seq, Some(rec), r)
                }
                Step::Remove(seq) => (*seq, None, dl.remove(*seq).map(drop)),
            };
            let states = allowed.entry(seq).or_insert_with(|| vec![None]);
            match result {
                Ok(()) => *states = vec![after],
                Err(_) => {
                    states.push(after);
                    break;
                }
            }
        }
    }
    let finished = fs.survivor().is_none();
    if finished {
        fs.cut_now();
    }
    let (cut, survivor) = fs.survivor().expect("cut");
    cut_ops.insert(cut.op);
    let ctx = format!("{ctx} ({} {})", cut.op, cut.path.display());

    // The restart: the store opens on what survived, shows only complete dead letters, each
    // one an allowed state, and has cleaned up any temporary file.
    let dl = DeadLetters::open_with_fs(&spool_dir(), Arc::new(survivor.clone()))
        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    let seen = contents(&dl);
    assert_eq!(dl.len(), seen.len() as u64, "{ctx}: count");
    for seq in seen.keys() {
        assert!(allowed.contains_key(seq), "{ctx}: seq {seq} nobody put");
    }
    for (seq, states) in &allowed {
        let got = seen.get(seq).cloned();
        assert!(
            states.contains(&got),
            "{ctx}: seq {seq} is {:?}, allowed {:?}",
            got.as_ref().map(|(m, p)| (&m.seq, p.len())),
            states
                .iter()
                .map(|s| s.as_ref().map(|(m, p)| (m.seq, p[0], p.len())))
                .collect::<Vec<_>>()
        );
    }
    for name in names(&survivor, dl.dir()) {
        assert!(name.ends_with(".dl"), "{ctx}: {name} left behind");
    }
    finished
}
