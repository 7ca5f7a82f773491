use std::collections::HashSet;

use rand::{Rng, SeedableRng};

use super::fingerprint::*;
use super::journal::*;
use super::set::*;
use super::*;
use crate::clock::ManualClock;
use crate::spool::RealFs;
use std::collections::VecDeque;

const H: u64 = 3_600_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A set whose clock stands at `now` (claims and commits are given their own times).
fn open(dir: &Path, window: Duration, max: usize, now: u64) -> Arc<Dedup> {
    open_on(dir, window, max, &ManualClock::new(now))
}

fn open_on(dir: &Path, window: Duration, max: usize, clock: &ManualClock) -> Arc<Dedup> {
    Arc::new(Dedup::open(Arc::new(RealFs), dir, window, max, clock.clock()).unwrap())
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
    let err = Dedup::open(
        Arc::new(RealFs),
        dir.path(),
        DAY,
        100,
        ManualClock::new(2000).clock(),
    )
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
    let d = Arc::new(
        Dedup::open(
            Arc::new(RealFs),
            &missing,
            DAY,
            100,
            ManualClock::new(0).clock(),
        )
        .unwrap(),
    );
    store(&d, "a", 1);
    assert!(is_duplicate(d.claim("a", 2)));
    assert_eq!(d.journal_bytes(), 0);
    d.close();
}

#[test]
fn the_journal_thread_compacts_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let max = 100;
    // The journal thread judges expiry by the set's clock, which moves with the commits.
    let t0 = 1_700_000_000_000;
    let clock = ManualClock::new(t0);
    let d = open_on(dir.path(), DAY, max, &clock);
    let n = 2 * COMPACT_SLACK as u64;
    for i in 0..n {
        store(&d, &format!("id{i}"), t0 + i * 1000);
        clock.advance(Duration::from_secs(1));
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

#[test]
fn ids_are_remembered_per_endpoint_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path(), DAY, 1000, 1);
    new(d.claim_in(Some("sandbox"), "msg_1", 1)).commit(1);
    // The same id through the default endpoint, or a third one, is another delivery.
    new(d.claim("msg_1", 2)).commit(2);
    new(d.claim_in(Some("agency"), "msg_1", 2)).commit(2);
    // An endpoint name cannot be smuggled through the id: `sandbox` + `msg_1` is not the
    // default endpoint's `sandbox\0msg_1`, nor another split of the same bytes.
    new(d.claim_in(Some("sand"), "box\u{0}msg_1", 3)).commit(3);
    for (endpoint, id) in [
        (Some("sandbox"), "msg_1"),
        (None, "msg_1"),
        (Some("agency"), "msg_1"),
    ] {
        assert!(is_duplicate(d.claim_in(endpoint, id, 4)), "{endpoint:?}");
    }
    d.close();
    drop(d);
    let d = open(dir.path(), DAY, 1000, 5);
    assert!(is_duplicate(d.claim_in(Some("sandbox"), "msg_1", 5)));
    assert!(is_duplicate(d.claim("msg_1", 5)));
    new(d.claim_in(Some("other"), "msg_1", 5));
}
