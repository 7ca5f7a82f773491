//! The set of stored ids: a ring in insertion order and an index over it.
//!
//! The stored set is two compact structures ([`Remembered`]), about 21 bytes per id in all at
//! the default bound:
//!
//! - a **ring** of 16-byte fingerprints in insertion order, for expiry and eviction, in blocks
//!   of [`BLOCK`] entries (growing never copies the ring, and the memory of forgotten ids goes
//!   back block by block), and beside it when each was stored, as runs of entries stored in the
//!   same second (8 bytes a run: a handful of runs per second of traffic, not 4 bytes per id);
//! - an **index** ([`Index`]): open addressing over 32-bit slots, each a ring position plus a
//!   tag from the fingerprint, at most 4/5 full and never larger than `max_entries` needs
//!   (5 bytes per id when full, about half what a power-of-two table such as hashbrown's
//!   takes). It only finds candidates: a duplicate needs all 128 bits of the ring entry to
//!   match, so a fault in the index can make the set forget an id, never invent one.
//!
//! Times are kept in whole seconds, rounded *up*: a stored id may be remembered up to one second
//! longer than the window, never shorter (both only decide between a duplicate answer and
//! storing again; neither can acknowledge something that was not stored). The ring may hold
//! stale entries (an id stored again after its window passed while older-looking entries
//! stayed in front of it); the index always points at the newest, and popping a stale entry
//! leaves it alone. Expiry and eviction (`auth.dedup_max_entries`, oldest first) count stale
//! entries too.

use std::collections::VecDeque;

use super::fingerprint::Fingerprint;

/// Most ids that can be remembered (`auth.dedup_max_entries` is checked against it): ring
/// positions in the index are 32 bits, and this many ids already take about 3 GB.
pub const MAX_ENTRIES: usize = 100_000_000;
/// Ring entries per block (64 KiB).
const BLOCK: usize = 4096;

/// `ms` as Unix seconds, rounded up (so an id is never forgotten early).
pub(super) fn secs_of(ms: u64) -> u32 {
    ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32
}

/// Whether an id stored at `secs` is still inside the window at `now_ms`.
pub(super) fn live(secs: u32, window_ms: u64, now_ms: u64) -> bool {
    (u64::from(secs) * 1000).saturating_add(window_ms) >= now_ms
}

/// Ring entries stored in the same second: from `start` up to the next run's start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Run {
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
pub(super) struct Ring {
    blocks: VecDeque<Box<[Fingerprint]>>,
    /// One released block kept for the next push, so a full ring turning over does not allocate.
    spare: Option<Box<[Fingerprint]>>,
    /// In sequence order, the first starting at `head`; empty exactly when the ring is.
    pub(super) times: VecDeque<Run>,
    head: u64,
    tail: u64,
}

impl Ring {
    pub(super) fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    pub(super) fn get(&self, seq: u64) -> &Fingerprint {
        let block = (seq / BLOCK as u64 - self.head / BLOCK as u64) as usize;
        &self.blocks[block][(seq % BLOCK as u64) as usize]
    }

    /// When the entry `seq` (in `head..tail`) was stored.
    pub(super) fn secs(&self, seq: u64) -> u32 {
        debug_assert!(self.head <= seq && seq < self.tail);
        let head = self.head as u32;
        let at = (seq - self.head) as u32;
        let i = self
            .times
            .partition_point(|r| r.start.wrapping_sub(head) <= at);
        self.times[i - 1].secs
    }

    pub(super) fn front(&self) -> Option<(Fingerprint, u32)> {
        (self.head < self.tail).then(|| (*self.get(self.head), self.times[0].secs))
    }

    /// Every entry, oldest first: (seq, fingerprint, when it was stored).
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, Fingerprint, u32)> + '_ {
        let mut runs = self.times.iter().peekable();
        let mut secs = 0;
        (self.head..self.tail).map(move |seq| {
            if let Some(r) = runs.next_if(|r| r.start == seq as u32) {
                secs = r.secs;
            }
            (seq, *self.get(seq), secs)
        })
    }

    pub(super) fn push(&mut self, fp: Fingerprint, secs: u32) -> u64 {
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

    pub(super) fn pop_front(&mut self) {
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
pub(super) struct Remembered {
    ring: Ring,
    index: Index,
    max_entries: usize,
}

impl Remembered {
    /// Room for `n` ids to begin with.
    pub(super) fn new(max_entries: usize, n: usize) -> Remembered {
        let max_entries = max_entries.clamp(1, MAX_ENTRIES);
        Remembered {
            ring: Ring::default(),
            index: Index::new(max_entries, n),
            max_entries,
        }
    }

    /// Distinct fingerprints remembered.
    pub(super) fn len(&self) -> usize {
        self.index.len
    }

    /// When `fp` was stored (its newest entry), if it is remembered.
    pub(super) fn find(&self, fp: Fingerprint) -> Option<u32> {
        let slot = self.index.find(&self.ring, fp, None)?;
        Some(
            self.ring
                .secs(self.index.seq(&self.ring, self.index.slots[slot])),
        )
    }

    /// Remembers `fp` as stored at `secs`; an older entry of it stays in the ring, stale. The
    /// oldest entries go first if the ring is full (the next claim would evict them anyway).
    pub(super) fn push(&mut self, fp: Fingerprint, secs: u32) {
        while self.ring.len() >= self.max_entries {
            self.pop_front();
        }
        let seq = self.ring.push(fp, secs);
        self.index.insert(&self.ring, fp, seq);
    }

    /// Forgets the oldest entry (if it is not stale, its fingerprint too).
    pub(super) fn pop_front(&mut self) {
        let Some((fp, _)) = self.ring.front() else {
            return;
        };
        if let Some(slot) = self.index.find(&self.ring, fp, Some(self.ring.head)) {
            self.index.remove(&self.ring, slot);
        }
        self.ring.pop_front();
    }

    /// Forgets, oldest first, what is past the window and what is over `max_entries`.
    pub(super) fn evict(&mut self, now_ms: u64, window_ms: u64) {
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
    pub(super) fn live_entries(&self) -> impl Iterator<Item = (u32, Fingerprint)> + '_ {
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
pub(super) struct Index {
    slots: Box<[u32]>,
    len: usize,
    pos_bits: u32,
    /// The size that holds `max_entries` at 4/5: the table never grows beyond it.
    max_slots: usize,
}

impl Index {
    pub(super) fn new(max_entries: usize, n: usize) -> Index {
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
    pub(super) fn size_for(n: usize, max_slots: usize) -> usize {
        n.saturating_mul(2).clamp(64, max_slots.max(64))
    }

    pub(super) fn mask(&self) -> u32 {
        (1u32 << self.pos_bits) - 1
    }

    pub(super) fn tag(&self, fp: Fingerprint) -> u32 {
        (fp.0[0] >> self.pos_bits).max(1) << self.pos_bits
    }

    pub(super) fn home(&self, fp: Fingerprint) -> usize {
        let hi = u64::from(fp.0[2]) | u64::from(fp.0[3]) << 32;
        ((u128::from(hi) * self.slots.len() as u128) >> 64) as usize
    }

    /// The sequence number a slot's ring position stands for.
    pub(super) fn seq(&self, ring: &Ring, slot: u32) -> u64 {
        let pos = slot & self.mask();
        ring.head + u64::from(pos.wrapping_sub(ring.head as u32) & self.mask())
    }

    pub(super) fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The slot holding `fp` (with `at`, only if it points at that sequence number).
    pub(super) fn find(&self, ring: &Ring, fp: Fingerprint, at: Option<u64>) -> Option<usize> {
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
    pub(super) fn insert(&mut self, ring: &Ring, fp: Fingerprint, seq: u64) {
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
    pub(super) fn remove(&mut self, ring: &Ring, i: usize) {
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

    pub(super) fn grow(&mut self, ring: &Ring) {
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
