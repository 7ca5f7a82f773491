//! What is remembered of an id: a keyed 128-bit fingerprint.
//!
//! An id, pending or stored, is kept as its fingerprint: SipHash-1-3 with a 128-bit output, keyed
//! by 16 random bytes made when the journal is created and kept in its header (so they survive
//! restarts and compactions; the key never leaves the spool directory). Two different ids with
//! the same fingerprint would make the second a false `duplicate` — a 2xx for a delivery that
//! was never stored, i.e. lost — so nothing shorter than 128 bits is ever compared: among a
//! million remembered ids the chance that *any* two collide is about n²/2¹²⁹ ≈ 2·10⁻²⁷ (with 64
//! bits it would be 3·10⁻⁸ per million, and every new id would be another draw). The key makes
//! the fingerprints of any set of ids behave as random numbers, however the ids are chosen.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

/// The fingerprint key and what is derived from it.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) bytes: [u8; 16],
    sip: SipHasher13,
    /// CRC-32C of the key: where every record's CRC starts, so a record written under another
    /// key never passes.
    pub(super) crc: u32,
}

impl Key {
    pub(super) fn random() -> Key {
        Key::new(rand::random())
    }

    pub(super) fn new(bytes: [u8; 16]) -> Key {
        Key {
            bytes,
            sip: SipHasher13::new_with_key(&bytes),
            crc: crc32c::crc32c(&bytes),
        }
    }

    pub(super) fn fingerprint(&self, id: &str) -> Fingerprint {
        Fingerprint::from_u128(self.sip.hash(id.as_bytes()).as_u128())
    }

    /// The fingerprint of `id` as delivered through `endpoint` (`None`: the default endpoint,
    /// whose fingerprints are those of the id alone, as before endpoints existed, so a journal
    /// written then still recognises its ids). Another endpoint's are of `name ‖ 0 ‖ id`: a
    /// delivery id never holds a NUL (HTTP header values cannot), so no two (endpoint, id)
    /// pairs hash the same input, and the same id from two senders is two deliveries.
    pub(super) fn fingerprint_in(&self, endpoint: Option<&str>, id: &str) -> Fingerprint {
        let Some(name) = endpoint else {
            return self.fingerprint(id);
        };
        let mut h = self.sip;
        h.write(name.as_bytes());
        h.write(&[0]);
        h.write(id.as_bytes());
        Fingerprint::from_u128(h.finish128().as_u128())
    }
}

/// A keyed 128-bit fingerprint of an id, as four words (the index takes its tag and home from
/// them).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(super) struct Fingerprint(pub(super) [u32; 4]);

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
pub(super) struct FirstWord(u64);

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
    pub(super) fn from_u128(v: u128) -> Fingerprint {
        Fingerprint([
            v as u32,
            (v >> 32) as u32,
            (v >> 64) as u32,
            (v >> 96) as u32,
        ])
    }

    pub(super) fn to_u128(self) -> u128 {
        let [a, b, c, d] = self.0.map(u128::from);
        a | b << 32 | c << 64 | d << 96
    }
}
