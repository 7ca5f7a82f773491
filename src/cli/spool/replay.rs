//! `spool replay`: append copies of confirmed records again, for the bridge to forward.

use std::io::Write;
use std::ops::ControlFlow;

use bytes::Bytes;

use super::records::parse_since;
use super::{mark_copy, open_for_writing, survey, Error, ReplayArgs};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::deadletter::{DeadLetters, Meta};
use crate::delivery::{CopyKind, Delivery};
use crate::spool::{self, inspect, Spool};

/// One end of a replay range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bound {
    Seq(u64),
    /// Milliseconds since the epoch.
    Time(u64),
}

impl Bound {
    /// A plain number is a seq; anything else a time, as for `inspect --since`.
    fn parse(flag: &str, s: &str) -> Result<Bound, Error> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Bound::Seq)
                .map_err(|_| Error::Usage(format!("{flag} {s:?}: seq out of range")));
        }
        parse_since(s)
            .map(Bound::Time)
            .map_err(|_| Error::Usage(format!("{flag} {s:?}: expected a seq, an RFC 3339 time (2025-01-31T12:00:00Z) or a duration ago (15m)")))
    }
}

/// What replay selects by: the range, the action.
pub(super) struct ReplayFilter {
    since: Bound,
    until: Option<Bound>,
    action: Option<String>,
}

impl ReplayFilter {
    fn wants(&self, seq: u64, at_ms: u64, action: &str) -> bool {
        let after = match self.since {
            Bound::Seq(s) => seq >= s,
            Bound::Time(t) => at_ms >= t,
        };
        let before = match self.until {
            None => true,
            Some(Bound::Seq(s)) => seq <= s,
            Some(Bound::Time(t)) => at_ms <= t,
        };
        after && before && self.action.as_deref().is_none_or(|a| a == action)
    }
}

/// One record replay will append again.
pub(super) struct Pick {
    seq: u64,
    at_ms: u64,
    action: String,
    dead_letter: bool,
    payload: Bytes,
}

/// The records `replay` selects, in original seq order, and how many unconfirmed records in
/// the range it leaves alone (the bridge still delivers those).
pub(super) fn replay_plan(config: &Config, args: &ReplayArgs) -> Result<(Vec<Pick>, u64), Error> {
    let filter = ReplayFilter {
        since: Bound::parse("--since", &args.since)?,
        until: args
            .until
            .as_deref()
            .map(|u| Bound::parse("--until", u))
            .transpose()?,
        action: args.action.clone(),
    };
    let dead = match DeadLetters::open_existing(&config.spool.dir)? {
        Some(dl) => dl.list()?.into_iter().filter_map(Result::ok).collect(),
        None => Vec::new(),
    };
    // A dead-lettered record was never published (it was refused or unusable), though its
    // segment is confirmed past: it is replayed only with --dead-letters, from the store.
    let dead_seqs: std::collections::HashSet<u64> = dead.iter().map(|m: &Meta| m.seq).collect();
    let mut picks = Vec::new();
    let mut unconfirmed = 0;
    let s = survey(config, &mut |r| {
        let Ok(d) = Delivery::decode(Bytes::copy_from_slice(r.payload)) else {
            return ControlFlow::Continue(());
        };
        if !filter.wants(r.seq, r.appended_at_ms, &d.action) || dead_seqs.contains(&r.seq) {
            return ControlFlow::Continue(());
        }
        if !r.confirmed {
            unconfirmed += 1;
            return ControlFlow::Continue(());
        }
        picks.push(Pick {
            seq: r.seq,
            at_ms: r.appended_at_ms,
            action: d.action.clone(),
            dead_letter: false,
            payload: mark_copy(d, CopyKind::Replay),
        });
        ControlFlow::Continue(())
    })?;
    if s.damage().count() > 0 {
        eprintln!("note: the scan skipped damaged regions or files; run `hookbridge spool verify`");
    }
    if args.dead_letters {
        if let Some(dl) = DeadLetters::open_existing(&config.spool.dir)? {
            for m in dead {
                let Some((_, payload)) = dl.get(m.seq)? else {
                    continue;
                };
                let Ok(d) = Delivery::decode(payload.clone()) else {
                    eprintln!(
                        "hookbridge: dead letter seq {} is not a delivery record; skipped",
                        m.seq
                    );
                    continue;
                };
                // The store keeps no append time; the receive time is the closest.
                if filter.wants(m.seq, d.received_at_ms, &d.action) {
                    picks.push(Pick {
                        seq: m.seq,
                        at_ms: d.received_at_ms,
                        action: d.action.clone(),
                        dead_letter: true,
                        payload: mark_copy(d, CopyKind::Replay),
                    });
                }
            }
        }
        picks.sort_by_key(|p| p.seq);
    }
    Ok((picks, unconfirmed))
}

pub(super) fn print_plan(
    picks: &[Pick],
    unconfirmed: u64,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let (Some(first), Some(last)) = (picks.first(), picks.last()) else {
        say!(out, "replay: nothing selected");
        if unconfirmed > 0 {
            say!(out, "  {unconfirmed} unconfirmed record(s) in the range are still queued: the bridge delivers them anyway");
        }
        return Ok(());
    };
    let dead = picks.iter().filter(|p| p.dead_letter).count();
    let (t0, t1) = picks
        .iter()
        .fold((u64::MAX, 0), |(a, b), p| (a.min(p.at_ms), b.max(p.at_ms)));
    say!(
        out,
        "replay: {} record(s) ({} retained, {dead} dead letter(s)), seqs {}..={}, appended {} .. {}",
        picks.len(),
        picks.len() - dead,
        first.seq,
        last.seq,
        rfc3339(t0),
        rfc3339(t1)
    );
    let mut by_action = std::collections::BTreeMap::<&str, u64>::new();
    for p in picks {
        *by_action.entry(&p.action).or_default() += 1;
    }
    for (action, n) in by_action {
        say!(out, "  {n:>8}  {action}");
    }
    if unconfirmed > 0 {
        say!(out, "  ({unconfirmed} unconfirmed record(s) in the range are still queued and not copied: the bridge delivers them anyway)");
    }
    Ok(())
}

/// Replay re-appends copies: each selected record becomes a new record (new seq, same payload,
/// so the same delivery id), fsync'd, in the original order, and the bridge forwards it through
/// the normal path when it starts. Nothing is deleted, so a crash part-way leaves duplicates at
/// worst. The selected records are held in memory first (at most the spool's size), because
/// appending may evict the very segments they came from.
pub(super) fn replay(config: Config, args: &ReplayArgs, out: &mut dyn Write) -> Result<u8, Error> {
    let dir = config.spool.dir.clone();
    if !dir.is_dir() {
        return Err(inspect::Error::NoSuchDir(dir).into());
    }
    let (picks, unconfirmed) = replay_plan(&config, args)?;
    print_plan(&picks, unconfirmed, out)?;
    if args.dry_run {
        say!(out, "dry run: nothing changed");
        return Ok(0);
    }
    if picks.is_empty() {
        return Err(Error::Refused("nothing to replay".to_owned()));
    }
    config.validate()?;
    let cfg = crate::app::spool_config(&config);
    let (spool, rt) = open_for_writing(cfg, &dir)?;
    let result = rt.block_on(append_in_order(&spool, &picks));
    let closed = rt.block_on(spool.close());
    let (done, range) = match result {
        Ok(r) => r,
        Err((done, source)) => {
            let _ = closed;
            say!(
                out,
                "replayed {done} of {} record(s) before the spool refused: {source}",
                picks.len()
            );
            return Err(Error::Refused(format!(
                "replay stopped after {done} record(s): {source}; start the bridge to forward them, then replay the rest (--since the next seq)"
            )));
        }
    };
    closed.map_err(|source| Error::Spool {
        dir: dir.clone(),
        source,
    })?;
    say!(
        out,
        "replayed {done} record(s) as spool seqs {}..={}; start the bridge to forward them",
        range.0,
        range.1
    );
    Ok(0)
}

/// Appends `picks` in order, a few at a time so group commit batches them. Returns how many and
/// the new seq range, or how many were appended before an error.
async fn append_in_order(
    spool: &Spool,
    picks: &[Pick],
) -> Result<(u64, (u64, u64)), (u64, spool::Error)> {
    // `join_all` over a short list polls its futures in order, and an append is queued on its
    // first poll: the new seqs follow the original order, which keeps per-resource order.
    const AT_ONCE: usize = 16;
    let mut done = 0u64;
    let mut range = (0, 0);
    for chunk in picks.chunks(AT_ONCE) {
        let results =
            futures_util::future::join_all(chunk.iter().map(|p| spool.append(p.payload.clone())))
                .await;
        for r in results {
            let seq = r.map_err(|e| (done, e))?;
            assert!(seq > range.1, "replay appends keep their order");
            if done == 0 {
                range.0 = seq;
            }
            range.1 = seq;
            done += 1;
        }
    }
    Ok((done, range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_bounds_are_seqs_or_times() {
        assert_eq!(Bound::parse("--since", "42").unwrap(), Bound::Seq(42));
        assert_eq!(
            Bound::parse("--since", "1970-01-01T00:00:02Z").unwrap(),
            Bound::Time(2000)
        );
        assert!(matches!(Bound::parse("--since", "5m"), Ok(Bound::Time(_))));
        assert!(matches!(
            Bound::parse("--until", "soon"),
            Err(Error::Usage(m)) if m.contains("--until")
        ));
        let f = ReplayFilter {
            since: Bound::Seq(10),
            until: Some(Bound::Time(5_000)),
            action: Some("a.created".to_owned()),
        };
        assert!(f.wants(10, 5_000, "a.created"), "both ends inclusive");
        assert!(!f.wants(9, 1_000, "a.created"));
        assert!(!f.wants(11, 5_001, "a.created"));
        assert!(!f.wants(11, 1_000, "b.updated"));
    }
}
