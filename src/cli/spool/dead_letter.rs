//! `spool dead-letter list`, `requeue` and `purge`. Requeue and purge run through a running
//! bridge when one holds the lock (`live.rs`); the work is [`crate::repair`]'s either way.

use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::live::{self, Target};
use super::{open_for_writing, Error};
use crate::admin::api::dead_letter_json;
use crate::clock::rfc3339;
use crate::config::Config;
use crate::deadletter::{DeadLetters, Meta};
use crate::repair::{self, RequeueReport, Selection};
use crate::spool::{inspect, Spool};

pub(super) fn list(config: &Config, json: bool, out: &mut dyn Write) -> Result<u8, Error> {
    let Some(dl) = DeadLetters::open_existing(&config.spool.dir)? else {
        if !config.spool.dir.is_dir() {
            return Err(inspect::Error::NoSuchDir(config.spool.dir.clone()).into());
        }
        if !json {
            say!(out, "no dead letters in {}", config.spool.dir.display());
        }
        return Ok(0);
    };
    let entries = dl.list()?;
    let mut metas = Vec::new();
    for e in entries {
        match e {
            Ok(m) => metas.push(m),
            Err(e) => eprintln!("hookbridge: {e}"),
        }
    }
    if json {
        for m in &metas {
            say!(out, "{}", dead_letter_json(m));
        }
        return Ok(0);
    }
    if metas.is_empty() {
        say!(out, "no dead letters in {}", dl.dir().display());
        return Ok(0);
    }
    print_table(&metas, out)
}

/// The dead letters as a table with a header, and what to do about them.
fn print_table(metas: &[Meta], out: &mut dyn Write) -> Result<u8, Error> {
    let rows: Vec<[String; 7]> = metas
        .iter()
        .map(|m| {
            [
                m.seq.to_string(),
                rfc3339(m.dead_lettered_at_ms),
                m.id.clone(),
                m.action.clone(),
                m.destination.clone(),
                m.reason.clone(),
                m.error.clone(),
            ]
        })
        .collect();
    let head = [
        "SEQ",
        "DEAD-LETTERED",
        "ID",
        "ACTION",
        "DESTINATION",
        "REASON",
        "ERROR",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 6 {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            } else {
                s.push_str(c);
            }
        }
        s
    };
    say!(out, "{}", line(head));
    for r in &rows {
        say!(out, "{}", line(r.each_ref().map(String::as_str)));
    }
    say!(
        out,
        "{} dead letter(s). After fixing the cause: `hookbridge spool dead-letter requeue --seq N | --id ID | --reason R | --all` (through the running bridge, or offline when it is stopped).",
        rows.len()
    );
    Ok(0)
}

/// What a requeue printed, live or offline: one line per record, the total, and what was left.
pub(super) fn print_requeue(
    report: &RequeueReport,
    then: &str,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    for r in &report.requeued {
        say!(
            out,
            "requeued dead letter seq {} (id {}, action {}) as spool seq {}",
            r.seq,
            r.id,
            r.action,
            r.new_seq
        );
    }
    for s in &report.skipped {
        eprintln!("hookbridge: {s}");
    }
    say!(out, "requeued {} record(s); {then}", report.requeued.len());
    if let Some(e) = &report.stopped {
        return Err(Error::Refused(format!(
            "requeue stopped, the spool refused: {e}; the rest are still in the store"
        )));
    }
    if !report.skipped.is_empty() {
        return Err(Error::Refused(format!(
            "{} dead letter(s) could not be requeued and were left in the store",
            report.skipped.len()
        )));
    }
    Ok(0)
}

/// The offline path's checks before it takes the lock: the directory exists (opening the spool
/// would create it) and the selection matches something, read-only, so a selection that matches
/// nothing changes nothing (opening the spool runs recovery).
fn precheck(config: &Config, sel: &Selection) -> Result<repair::Matcher, Error> {
    let matcher = sel.matcher(true)?;
    let dir = &config.spool.dir;
    if !dir.is_dir() {
        return Err(inspect::Error::NoSuchDir(dir.clone()).into());
    }
    let nothing = || Error::Refused(format!("no dead letter {}: nothing to do", sel.describe()));
    let dl = DeadLetters::open_existing(dir)?.ok_or_else(nothing)?;
    if repair::select(&dl, &matcher)?.0.is_empty() {
        return Err(nothing());
    }
    Ok(matcher)
}

/// With the spool's lock held (so no bridge adds to the store meanwhile): opens the store
/// and runs `work` on the selected records, then closes the spool.
fn under_lock<T>(
    config: &Config,
    matcher: &repair::Matcher,
    work: impl FnOnce(
        &Spool,
        &tokio::runtime::Runtime,
        &Arc<DeadLetters>,
        Vec<Meta>,
        Vec<String>,
    ) -> Result<T, Error>,
) -> Result<T, Error> {
    let dir = config.spool.dir.clone();
    let (spool, rt) = open_for_writing(crate::app::spool_config(config), &dir)?;
    let result = DeadLetters::open(&dir)
        .map_err(Error::from)
        .map(Arc::new)
        .and_then(|dl| {
            let (selected, unreadable) = repair::select(&dl, matcher)?;
            work(&spool, &rt, &dl, selected, unreadable)
        });
    let closed = rt.block_on(spool.close());
    let value = result?;
    closed.map_err(|source| Error::Spool { dir, source })?;
    Ok(value)
}

pub(super) fn requeue(
    config: Config,
    target: &Target,
    sel: &Selection,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    if target.wanted(&config) {
        return live::requeue(&config, target, sel, out);
    }
    // Appending needs the spool settings `run` would use; check them like `run` does.
    let config = crate::app::Settings::new(config)?.raw;
    let matcher = precheck(&config, sel)?;
    let report = under_lock(&config, &matcher, |spool, rt, dl, selected, unreadable| {
        let mut report = rt.block_on(repair::requeue(spool, dl, selected, &AtomicU64::new(0)))?;
        if matcher.is_all() {
            report.skipped.extend(unreadable);
        }
        Ok(report)
    })?;
    print_requeue(&report, "start the bridge to forward them", out)
}

pub(super) fn purge(
    config: Config,
    target: &Target,
    sel: &Selection,
    yes: bool,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    if !yes {
        return Err(Error::Usage(
            "purge deletes dead letters for good: add --yes".into(),
        ));
    }
    if target.wanted(&config) {
        return live::purge(&config, target, sel, out);
    }
    config.validate()?;
    let matcher = precheck(&config, sel)?;
    let n = under_lock(&config, &matcher, |_, rt, dl, selected, _| {
        Ok(rt.block_on(repair::purge(dl, selected))?)
    })?;
    say!(out, "purged {n} dead letter(s)");
    Ok(0)
}
