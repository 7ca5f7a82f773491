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
