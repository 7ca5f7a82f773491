//! `spool dead-letter list` and `spool dead-letter requeue`.

use std::io::Write;

use serde::Serialize;

use super::{mark_copy, open_for_writing, Error, Selection};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::deadletter::{DeadLetters, Meta};
use crate::delivery::{CopyKind, Delivery};
use crate::spool::{inspect, Spool};

#[derive(Serialize)]
pub(super) struct DeadLetterJson<'a> {
    seq: u64,
    id: &'a str,
    action: &'a str,
    destination: &'a str,
    reason: &'a str,
    error: &'a str,
    dead_lettered_at: String,
}

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
            let j = DeadLetterJson {
                seq: m.seq,
                id: &m.id,
                action: &m.action,
                destination: &m.destination,
                reason: &m.reason,
                error: &m.error,
                dead_lettered_at: rfc3339(m.dead_lettered_at_ms),
            };
            say!(
                out,
                "{}",
                serde_json::to_string(&j).expect("meta serializes")
            );
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
        "{} dead letter(s). After fixing the cause: stop the bridge, `hookbridge spool dead-letter requeue --seq N | --id ID | --all`, start it.",
        rows.len()
    );
    Ok(0)
}

/// Selected dead letters, seq order, and how many unreadable files `--all` had to leave alone
/// (reported on stderr).
pub(super) fn select(dl: &DeadLetters, sel: &Selection) -> Result<(Vec<Meta>, u64), Error> {
    let mut out = Vec::new();
    let mut unreadable = 0;
    for e in dl.list()? {
        match e {
            Ok(m) => {
                let hit =
                    sel.all || sel.seq == Some(m.seq) || sel.id.as_deref() == Some(m.id.as_str());
                if hit {
                    out.push(m);
                }
            }
            Err(e) if sel.all => {
                eprintln!("hookbridge: skipping {e}");
                unreadable += 1;
            }
            Err(_) => {}
        }
    }
    Ok((out, unreadable))
}

pub(super) fn describe(sel: &Selection) -> String {
    match (&sel.id, sel.seq) {
        (Some(id), _) => format!("with delivery id {id:?}"),
        (None, Some(seq)) => format!("with seq {seq}"),
        _ => "at all".to_owned(),
    }
}

pub(super) fn requeue(
    mut config: Config,
    sel: &Selection,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    // Appending needs the spool settings `run` would use; check them like `run` does.
    let dir = config.spool.dir.clone();
    config = crate::app::Settings::new(config)?.raw;
    let cfg = crate::app::spool_config(&config);
    // `Spool::open` would create a missing directory: a typo must not make an empty spool.
    if !dir.is_dir() {
        return Err(inspect::Error::NoSuchDir(dir).into());
    }
    // Read-only first, so a selection that matches nothing changes nothing (opening the spool
    // runs recovery, which may truncate a torn tail).
    let nothing = || Error::Refused(format!("no dead letter {}: nothing to do", describe(sel)));
    let Some(dl) = DeadLetters::open_existing(&dir)? else {
        return Err(nothing());
    };
    if select(&dl, sel)?.0.is_empty() {
        return Err(nothing());
    }
    drop(dl);

    let (spool, rt) = open_for_writing(cfg, &dir)?;
    let result = requeue_locked(&rt, &spool, &dir, sel, out);
    let closed = rt.block_on(spool.close());
    let (done, skipped) = result?;
    closed.map_err(|source| Error::Spool {
        dir: dir.clone(),
        source,
    })?;
    say!(
        out,
        "requeued {done} record(s); start the bridge to forward them"
    );
    if skipped > 0 {
        return Err(Error::Refused(format!(
            "{skipped} dead letter(s) could not be requeued and were left in the store"
        )));
    }
    Ok(0)
}

/// With the lock held: append each selected record (fsync'd) and only then remove it from the
/// store, so a crash in between leaves a duplicate, never a loss. Returns (requeued, skipped).
pub(super) fn requeue_locked(
    rt: &tokio::runtime::Runtime,
    spool: &Spool,
    dir: &std::path::Path,
    sel: &Selection,
    out: &mut dyn Write,
) -> Result<(u64, u64), Error> {
    // Under the lock the store cannot change behind us: only the lock holder's forwarder adds.
    let dl = DeadLetters::open(dir)?;
    let (selected, mut skipped) = select(&dl, sel)?;
    let mut done = 0;
    for m in selected {
        let Some((_, payload)) = dl.get(m.seq)? else {
            continue;
        };
        let payload = match Delivery::decode(payload.clone()) {
            Ok(d) => mark_copy(d, CopyKind::Requeue),
            Err(e) => {
                eprintln!(
                    "hookbridge: dead letter seq {} is not a delivery record ({e}); left in the store",
                    m.seq
                );
                skipped += 1;
                continue;
            }
        };
        let new_seq = rt
            .block_on(spool.append(payload))
            .map_err(|source| Error::Spool {
                dir: dir.to_owned(),
                source,
            })?;
        dl.remove(m.seq)?;
        done += 1;
        say!(
            out,
            "requeued dead letter seq {} (id {}, action {}) as spool seq {new_seq}",
            m.seq,
            m.id,
            m.action
        );
    }
    Ok((done, skipped))
}
