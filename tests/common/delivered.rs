//! What a load test had acknowledged and what arrived at the broker, and the check between them:
//! nothing acknowledged lost, and each resource's acknowledged changes first arriving in order.

use std::collections::{BTreeMap, HashSet};

/// One delivery the bridge acknowledged with a 2xx: change `n` of resource `rid`.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: String,
    pub rid: String,
    pub n: u64,
}

/// One message as it arrived at the broker, in broker order (stream order, or partition order).
#[derive(Clone, Debug)]
pub struct Arrival {
    pub id: String,
    pub rid: String,
    pub n: u64,
}

/// What a run delivered.
#[derive(Debug)]
pub struct Tally {
    pub acked: usize,
    pub records: usize,
    pub distinct: usize,
    pub duplicates: usize,
    /// Distinct ids that arrived although their POST got no 2xx (stored, answer lost to a kill).
    pub unacked_arrived: usize,
    /// Resources whose acknowledged changes did not first arrive in change order.
    pub disordered: Vec<String>,
}

/// Panics (naming some) if an acknowledged delivery did not arrive; counts the rest. A resource
/// is in order when the first arrivals of its acknowledged changes are its change numbers,
/// ascending: a duplicate may repeat a change, never move a later one before an earlier one.
pub fn tally(label: &str, acked: &[Ack], got: &[Arrival]) -> Tally {
    let arrived: HashSet<&str> = got.iter().map(|a| a.id.as_str()).collect();
    let lost: Vec<&str> = acked
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| !arrived.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{label}: {} of {} acknowledged deliveries lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    let acked_ids: HashSet<&str> = acked.iter().map(|a| a.id.as_str()).collect();
    let mut seen = HashSet::new();
    let mut firsts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in got {
        if seen.insert(a.id.as_str()) && acked_ids.contains(a.id.as_str()) {
            firsts.entry(a.rid.as_str()).or_default().push(a.n);
        }
    }
    let mut want: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in acked {
        want.entry(a.rid.as_str()).or_default().push(a.n);
    }
    let disordered = want
        .iter_mut()
        .filter_map(|(rid, ns)| {
            ns.sort_unstable();
            (firsts.get(rid) != Some(ns)).then(|| rid.to_string())
        })
        .collect();
    Tally {
        acked: acked.len(),
        records: got.len(),
        distinct: seen.len(),
        duplicates: got.len() - seen.len(),
        unacked_arrived: seen.iter().filter(|id| !acked_ids.contains(*id)).count(),
        disordered,
    }
}

/// How the delivery ids that arrived differ from those sent.
#[derive(Debug, Default, PartialEq)]
pub struct IdDiff {
    /// Sent, never arrived.
    pub missing: Vec<String>,
    /// Arrived, never sent.
    pub unexpected: Vec<String>,
    /// Arrived more than once, with the number of copies.
    pub duplicated: BTreeMap<String, usize>,
}

/// Compares the sets of ids sent and arrived, counting copies: equal lengths can hide a loss
/// behind a duplicate.
pub fn diff_ids<'a>(
    sent: impl IntoIterator<Item = &'a str>,
    got: impl IntoIterator<Item = &'a str>,
) -> IdDiff {
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for id in got {
        *copies.entry(id).or_default() += 1;
    }
    let sent: std::collections::BTreeSet<&str> = sent.into_iter().collect();
    IdDiff {
        missing: sent
            .iter()
            .filter(|id| !copies.contains_key(*id))
            .map(|id| id.to_string())
            .collect(),
        unexpected: copies
            .keys()
            .filter(|id| !sent.contains(*id))
            .map(|id| id.to_string())
            .collect(),
        duplicated: copies
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.to_string(), *n))
            .collect(),
    }
}

/// Panics unless every id sent arrived exactly once and nothing else arrived, naming the
/// missing, unexpected and duplicated ids (with their counts).
pub fn assert_exactly_once<'a>(
    label: &str,
    sent: impl IntoIterator<Item = &'a str>,
    got: impl IntoIterator<Item = &'a str>,
) {
    let d = diff_ids(sent, got);
    assert!(
        d == IdDiff::default(),
        "{label}: not exactly once: missing {:?}, unexpected {:?}, duplicated (id: copies) {:?}",
        d.missing,
        d.unexpected,
        d.duplicated
    );
}

/// Panics unless every id sent arrived at least once and nothing else arrived; returns the
/// duplicates (copies beyond the first), which at-least-once delivery allows.
pub fn assert_at_least_once<'a>(
    label: &str,
    sent: impl IntoIterator<Item = &'a str>,
    got: impl IntoIterator<Item = &'a str>,
) -> usize {
    let d = diff_ids(sent, got);
    assert!(
        d.missing.is_empty() && d.unexpected.is_empty(),
        "{label}: {} missing, e.g. {:?}; {} unexpected, e.g. {:?}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)],
        d.unexpected.len(),
        &d.unexpected[..d.unexpected.len().min(10)]
    );
    d.duplicated.values().map(|n| n - 1).sum()
}
