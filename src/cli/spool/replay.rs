//! `spool replay`: append copies of confirmed records again, for the bridge to forward. While a
//! bridge runs, it does so itself (`live.rs`); the plan and the copies are [`crate::repair`]'s.

use std::io::Write;
use std::sync::atomic::AtomicU64;

use super::live::{self, Target};
use super::{open_for_writing, Error, ReplayArgs};
use crate::config::Config;
use crate::repair::{self, PlanSummary, ReplayFilter, ReplayRequest};
use crate::spool::inspect;

impl ReplayArgs {
    pub(super) fn request(&self) -> ReplayRequest {
        ReplayRequest {
            since: self.since.clone(),
            until: self.until.clone(),
            action: self.action.clone(),
            dead_letters: self.dead_letters,
            dry_run: self.dry_run,
        }
    }
}

/// The plan as printed, live or offline.
pub(super) fn print_plan(plan: &PlanSummary, out: &mut dyn Write) -> Result<(), Error> {
    if plan.damaged {
        eprintln!("note: the scan skipped damaged regions or files; run `hookbridge spool verify`");
    }
    let unconfirmed = plan.unconfirmed;
    let (Some(first), Some(last)) = (plan.first_seq, plan.last_seq) else {
        say!(out, "replay: nothing selected");
        if unconfirmed > 0 {
            say!(out, "  {unconfirmed} unconfirmed record(s) in the range are still queued: the bridge delivers them anyway");
        }
        return Ok(());
    };
    say!(
        out,
        "replay: {} record(s) ({} retained, {} dead letter(s)), seqs {first}..={last}, appended {} .. {}",
        plan.records,
        plan.retained,
        plan.dead_letters,
        plan.first_appended.as_deref().unwrap_or("?"),
        plan.last_appended.as_deref().unwrap_or("?"),
    );
    for (action, n) in &plan.by_action {
        say!(out, "  {n:>8}  {action}");
    }
    if unconfirmed > 0 {
        say!(out, "  ({unconfirmed} unconfirmed record(s) in the range are still queued and not copied: the bridge delivers them anyway)");
    }
    Ok(())
}

/// The refusal when the spool stopped a replay part-way.
pub(super) fn stopped(done: u64, total: u64, why: &str, out: &mut dyn Write) -> Error {
    let _ = writeln!(
        out,
        "replayed {done} of {total} record(s) before the spool refused: {why}"
    );
    Error::Refused(format!(
        "replay stopped after {done} record(s): {why}; let the bridge forward them, then replay the rest (--since the next seq)"
    ))
}

/// Replay re-appends copies: each selected record becomes a new record (new seq, same payload,
/// so the same delivery id), fsync'd, in the original order, and the bridge forwards it through
/// the normal path. Nothing is deleted, so a crash part-way leaves duplicates at worst. The
/// selected records are held in memory first (at most the spool's size), because appending may
/// evict the very segments they came from.
pub(super) fn replay(
    config: Config,
    target: &Target,
    args: &ReplayArgs,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let request = args.request();
    // A dry run reads only, so it needs no bridge; unless one was named with --admin.
    if target.wanted(&config) && (!args.dry_run || target.admin.is_some()) {
        return live::replay(&config, target, &request, out);
    }
    let dir = config.spool.dir.clone();
    if !dir.is_dir() {
        return Err(inspect::Error::NoSuchDir(dir).into());
    }
    let filter = ReplayFilter::new(&request)?;
    let (picks, plan) = repair::replay_plan(&dir, &filter, args.dead_letters)?;
    print_plan(&plan, out)?;
    if args.dry_run {
        say!(out, "dry run: nothing changed");
        return Ok(0);
    }
    if picks.is_empty() {
        return Err(Error::Refused("nothing to replay".to_owned()));
    }
    config.validate()?;
    let (spool, rt) = open_for_writing(crate::app::spool_config(&config), &dir)?;
    let result = rt.block_on(repair::append_in_order(&spool, &picks, &AtomicU64::new(0)));
    let closed = rt.block_on(spool.close());
    let range = match result {
        Ok(r) => r,
        Err((done, source)) => {
            let _ = closed;
            return Err(stopped(done, picks.len() as u64, &source.to_string(), out));
        }
    };
    closed.map_err(|source| Error::Spool {
        dir: dir.clone(),
        source,
    })?;
    let (first, last) = range.expect("picks is not empty");
    say!(
        out,
        "replayed {} record(s) as spool seqs {first}..={last}; start the bridge to forward them",
        picks.len()
    );
    Ok(0)
}
