//! `spool stats` and `spool verify`: what the spool holds, and whether every record reads back.

use std::io::Write;
use std::ops::ControlFlow;

use serde::Serialize;

use super::{age, bridge_state, count_dead_letters, survey, Error};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::deadletter::{self, DeadLetters};
use crate::spool::inspect::{ConfirmedState, LockState, Survey};

#[derive(Serialize)]
pub(super) struct StatsJson {
    dir: String,
    /// `held` / `free` / `unknown`.
    lock: &'static str,
    records: u64,
    records_on_disk: u64,
    bytes: u64,
    segments: usize,
    oldest_record_seq: Option<u64>,
    oldest_record_appended_at: Option<String>,
    oldest_record_age_seconds: Option<u64>,
    confirmed: u64,
    /// `ok` / `missing` / `corrupt` / `unsupported`.
    confirmed_file: &'static str,
    next_seq: u64,
    dead_letters: u64,
    /// Bytes of an incomplete write at the end of the newest segment (in progress while a
    /// bridge runs; truncated on its next start otherwise).
    tail_bytes: u64,
    /// Zero bytes after the newest segment's last frame, preallocated for the next records
    /// (`spool.preallocate_bytes`; cut on a clean close, or on the next start).
    preallocated_bytes: u64,
    /// Damaged regions, headers or files the scan found (`hookbridge spool verify` says which).
    damage: usize,
}

pub(super) fn stats(config: &Config, json: bool, out: &mut dyn Write) -> Result<u8, Error> {
    let s = survey(config, &mut |_| ControlFlow::Continue(()))?;
    let dead_letters = count_dead_letters(config)?;
    let damage = s.damage().count();
    if json {
        let j = stats_json(&s, dead_letters, damage);
        say!(
            out,
            "{}",
            serde_json::to_string(&j).expect("stats serialize")
        );
        return Ok(0);
    }
    let confirmed = match s.confirmed {
        ConfirmedState::Valid(p) => p.to_string(),
        ConfirmedState::Missing => "0 (no confirmed file yet)".to_owned(),
        ConfirmedState::Corrupt => "0 (confirmed file unreadable: see `spool verify`)".to_owned(),
        ConfirmedState::Unsupported(v) => format!("? (confirmed file has format version {v})"),
    };
    let oldest = match s.oldest_unconfirmed {
        Some((seq, at)) => format!(
            "seq {seq}, appended {} ({} ago)",
            rfc3339(at),
            humantime::format_duration(age(at))
        ),
        None => "none".to_owned(),
    };
    let mut tail = match (s.torn_tail_bytes(), s.lock) {
        (0, _) => "clean".to_owned(),
        (n, LockState::Held) => format!("in-progress tail ({n} bytes being written)"),
        (n, _) => format!("torn tail ({n} bytes, never acknowledged; cut on next start)"),
    };
    match s.preallocated_bytes() {
        0 => {}
        n => tail.push_str(&format!(", then {n} preallocated zero bytes")),
    }
    say!(out, "spool dir      {}", s.dir.display());
    say!(out, "bridge         {}", bridge_state(s.lock));
    say!(
        out,
        "records        {} unconfirmed ({} on disk)",
        s.unconfirmed,
        s.records_on_disk
    );
    say!(
        out,
        "bytes          {} in {} segment(s)",
        s.bytes,
        s.segments
    );
    say!(out, "oldest record  {oldest}");
    say!(out, "confirmed      {confirmed}");
    say!(out, "next seq       {}", s.next_seq);
    say!(out, "dead letters   {dead_letters}");
    say!(out, "tail           {tail}");
    if damage > 0 || s.unsupported() {
        say!(
            out,
            "damage         {damage} problem(s) found: run `hookbridge spool verify`"
        );
    }
    Ok(0)
}

fn stats_json(s: &Survey, dead_letters: u64, damage: usize) -> StatsJson {
    StatsJson {
        dir: s.dir.display().to_string(),
        lock: s.lock.as_str(),
        records: s.unconfirmed,
        records_on_disk: s.records_on_disk,
        bytes: s.bytes,
        segments: s.segments,
        oldest_record_seq: s.oldest_unconfirmed.map(|o| o.0),
        oldest_record_appended_at: s.oldest_unconfirmed.map(|o| rfc3339(o.1)),
        oldest_record_age_seconds: s.oldest_unconfirmed.map(|o| age(o.1).as_secs()),
        confirmed: s.confirmed.position(),
        confirmed_file: match s.confirmed {
            ConfirmedState::Valid(_) => "ok",
            ConfirmedState::Missing => "missing",
            ConfirmedState::Corrupt => "corrupt",
            ConfirmedState::Unsupported(_) => "unsupported",
        },
        next_seq: s.next_seq,
        dead_letters,
        tail_bytes: s.torn_tail_bytes(),
        preallocated_bytes: s.preallocated_bytes(),
        damage,
    }
}

pub(super) fn verify(config: &Config, out: &mut dyn Write) -> Result<u8, Error> {
    let s = survey(config, &mut |_| ControlFlow::Continue(()))?;
    for f in &s.findings {
        say!(out, "{}", f.describe(s.lock));
    }
    let mut damage = s.damage().count();
    if let Some(dl) = DeadLetters::open_existing(&config.spool.dir)? {
        for entry in dl.list()? {
            match entry {
                Ok(_) => {}
                Err(deadletter::Error::Corrupt(path)) => {
                    damage += 1;
                    say!(
                        out,
                        "DAMAGE {}: not readable as a dead letter; its record cannot be requeued",
                        path.display()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if s.damaged_files > 0 {
        say!(
            out,
            "note   damaged/ holds {} file(s) moved aside by an earlier recovery (kept for inspection)",
            s.damaged_files
        );
    }
    say!(
        out,
        "checked {} segment(s), {} record(s) ({} unconfirmed), confirmed position {}; bridge {}",
        s.segments,
        s.records_on_disk,
        s.unconfirmed,
        s.confirmed.position(),
        bridge_state(s.lock)
    );
    if s.unsupported() {
        say!(
            out,
            "could not verify: a file is in a format this build cannot read"
        );
        return Ok(2);
    }
    if damage > 0 {
        say!(out, "DAMAGE FOUND: {damage} problem(s)");
        return Ok(1);
    }
    say!(out, "clean");
    Ok(0)
}
