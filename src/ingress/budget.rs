//! The ingress memory budget: every request body held in memory is paid for in advance from one
//! global allowance (`http.max_buffered_bytes`), and optionally each client address may have only
//! so many bodies unfinished at once (`http.max_bodies_per_client`).
//!
//! A body's signature can only be checked once the whole body is in, so without this an
//! unauthenticated client holding many slow bodies decides how much memory the bridge uses. With
//! it, the bridge's body memory is bounded by the budget whatever the clients do: a body that
//! cannot get its reservation is refused (503 `buffer_full`, the sender retries) instead of read.
//!
//! A [`Reservation`] is taken before the first body byte is read: the whole `content-length`
//! when there is one, otherwise [`FIRST_STEP`] bytes, grown (doubling, never beyond
//! `http.max_body_bytes`) as bytes arrive. The body is collected into one buffer whose capacity
//! is what the reservation covers, so the reservation is what the body really weighs. The
//! reservation is released on drop; the ingress hands it to the spool with the record
//! (`Spool::append_then`), so it is held until the writer thread is done with the record, whether
//! or not the request is still waiting. (While the record is encoded the body exists twice for a
//! moment; the ingress drops the body's copy right after, so the record is the one that waits.)
//!
//! This module must never read a body or know about HTTP status codes: it only counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

/// What a body without `content-length` reserves first. Small, so that many slow bodies cannot
/// take the budget with reservations for bytes they never send; doubled as the body grows.
pub const FIRST_STEP: u64 = 8 * 1024;

/// The global allowance. Cheap to share: `Arc<Budget>`.
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    /// `hookbridge_http_buffered_bytes`, moved with `used`.
    gauge: IntGauge,
}

impl Budget {
    /// A budget of `limit` bytes whose use is mirrored in `gauge`.
    pub fn new(limit: u64, gauge: IntGauge) -> Arc<Budget> {
        gauge.set(0);
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
            gauge,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, or `None` if that would go over the limit (nothing is taken then).
    pub fn reserve(self: &Arc<Budget>, bytes: u64) -> Option<Reservation> {
        self.take(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn take(&self, bytes: u64) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes).filter(|n| *n <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.gauge.add(bytes as i64);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.sub(bytes as i64);
    }
}

/// Bytes of the budget held for one body; given back on drop.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation to cover at least `needed` bytes: to twice what it holds (so a
    /// body growing byte by byte reserves a logarithmic number of times), at most `cap`, at
    /// least `needed`. Returns the new size, or `None` (holding what it held) when the budget
    /// cannot give the difference or `needed` is over `cap`.
    pub fn grow(&mut self, needed: u64, cap: u64) -> Option<u64> {
        if needed <= self.bytes {
            return Some(self.bytes);
        }
        if needed > cap {
            return None;
        }
        let target = self
            .bytes
            .saturating_mul(2)
            .max(FIRST_STEP)
            .clamp(needed, cap);
        if !self.budget.take(target - self.bytes) {
            return None;
        }
        self.bytes = target;
        Some(target)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Unfinished bodies per client address, capped.
pub struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    /// A cap of `max` unfinished bodies per address; `None` when `max` is 0 (no cap).
    pub fn new(max: usize) -> Option<Arc<PerClient>> {
        (max > 0).then(|| {
            Arc::new(PerClient {
                max,
                open: Mutex::new(HashMap::new()),
            })
        })
    }

    /// A slot for one more body from `client`, or `None` if it already has `max` unfinished.
    pub fn enter(self: &Arc<PerClient>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            client,
        })
    }

    /// Addresses with at least one unfinished body (the map never keeps an address at 0).
    pub fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One unfinished body of one client; the count goes down on drop.
pub struct ClientSlot {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> Arc<Budget> {
        Budget::new(limit, IntGauge::new("t_buffered", "t").unwrap())
    }

    #[test]
    fn reservations_never_exceed_the_limit_and_are_given_back() {
        let b = budget(100);
        let r1 = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none(), "over the limit");
        let r2 = b.reserve(40).unwrap();
        assert_eq!(b.used(), 100);
        assert_eq!(b.gauge.get(), 100);
        assert!(b.reserve(1).is_none());
        drop(r1);
        assert_eq!(b.used(), 40);
        let r3 = b.reserve(0).unwrap();
        drop((r2, r3));
        assert_eq!(b.used(), 0);
        assert_eq!(b.gauge.get(), 0);
        assert!(b.reserve(u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn growing_doubles_up_to_the_cap_and_keeps_what_it_had_on_failure() {
        let b = budget(1 << 20);
        let mut r = b.reserve(FIRST_STEP).unwrap();
        assert_eq!(
            r.grow(FIRST_STEP, 64 * 1024),
            Some(FIRST_STEP),
            "enough already"
        );
        assert_eq!(r.grow(FIRST_STEP + 1, 64 * 1024), Some(2 * FIRST_STEP));
        assert_eq!(
            r.grow(5 * FIRST_STEP, 64 * 1024),
            Some(5 * FIRST_STEP),
            "at least needed"
        );
        assert_eq!(
            r.grow(5 * FIRST_STEP + 1, 64 * 1024),
            Some(64 * 1024),
            "capped"
        );
        assert_eq!(r.grow(64 * 1024 + 1, 64 * 1024), None, "beyond the cap");
        assert_eq!(b.used(), 64 * 1024);
        // The budget runs out: the grow fails and the reservation keeps its bytes.
        let other = b.reserve((1 << 20) - 64 * 1024 - 10).unwrap();
        let mut small = b.reserve(10).unwrap();
        assert_eq!(small.grow(11, 1 << 20), None);
        assert_eq!(small.bytes(), 10);
        assert_eq!(b.used(), 1 << 20);
        drop((r, other, small));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_zero_reservation_grows_by_the_first_step() {
        let b = budget(1 << 20);
        let mut r = b.reserve(0).unwrap();
        assert_eq!(r.grow(1, 1 << 20), Some(FIRST_STEP));
        assert_eq!(r.grow(1, 100), Some(FIRST_STEP), "already covered");
        let mut r = b.reserve(0).unwrap();
        assert_eq!(r.grow(1, 100), Some(100), "the cap wins over the step");
    }

    #[test]
    fn concurrent_reservations_stay_within_the_limit() {
        let b = budget(1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..10_000 {
                        if let Some(r) = b.reserve(7) {
                            held.push(r);
                        }
                        assert!(b.used() <= 1000);
                        if held.len() > 20 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.used(), 0);
        assert_eq!(b.gauge.get(), 0);
    }

    #[test]
    fn per_client_cap_counts_each_address_and_forgets_idle_ones() {
        assert!(PerClient::new(0).is_none(), "0 turns the cap off");
        let p = PerClient::new(2).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = p.enter(a).unwrap();
        let a2 = p.enter(a).unwrap();
        assert!(p.enter(a).is_none());
        let b1 = p.enter(b).unwrap();
        drop(a1);
        let a3 = p.enter(a).unwrap();
        assert_eq!(p.clients(), 2);
        drop((a2, a3, b1));
        assert_eq!(p.clients(), 0);
    }
}
