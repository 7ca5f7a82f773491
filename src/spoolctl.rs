//! `hookbridge spool …`: operator tools for the spool and the dead-letter store.
//!
//! Two kinds of command, and the line between them is the spool lock:
//! * **read-only** (`stats`, `verify`, `inspect`, `dead-letter list`, `replay --dry-run`) never
//!   take the lock and never create, truncate, move or delete a file, so they are safe next to a
//!   running bridge. They read through [`crate::spool::inspect`].
//! * **changing** (`dead-letter requeue`, `replay`) opens the [`Spool`], which takes the lock:
//!   while a bridge runs it is refused before anything is touched.
//!
//! Exit codes, for every `spool` command: 0 done (for `verify`: no damage); 1 `verify` found
//! damage, or a changing command was refused (lock held, nothing selected, a record it could not
//! requeue, the spool full part-way through a replay); 2 could not run (configuration, no such
//! directory, I/O error, bad arguments).

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use crate::config::{self, Config};
use crate::deadletter::{self, DeadLetters, Meta};
use crate::delivery::{Copied, CopyKind, Delivery};
use crate::metrics::Metrics;
use crate::spool::inspect::{self, ConfirmedState, LockState, Survey};
use crate::spool::{self, Spool};

/// `hookbridge spool [--dir PATH] <command>`.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {
    /// Spool directory; overrides `spool.dir` from the configuration.
    #[arg(long, global = true, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: SpoolCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    /// Backlog summary: records, bytes, segments, oldest record, confirmed position, next seq,
    /// dead letters. Read-only; safe while the bridge runs.
    Stats {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every segment header, frame and CRC, the confirmed file and the dead-letter files.
    /// Read-only; safe while the bridge runs. Exit 0 clean, 1 damage found, 2 could not run.
    Verify,
    /// Print records as JSON lines (unconfirmed only unless --all). Read-only; safe while the
    /// bridge runs.
    Inspect {
        /// Only records whose `metadata.action` is exactly this.
        #[arg(long, value_name = "A")]
        action: Option<String>,
        /// Only records appended at or after T: RFC 3339 (`2025-01-31T12:00:00Z`) or a duration
        /// ago (`15m`, `2h 30m`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Print at most N records.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Include confirmed records still on disk.
        #[arg(long)]
        all: bool,
    },
    /// The dead-letter store: records the broker refused permanently.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Put confirmed records still on disk (kept for `spool.retain_confirmed`) back into the
    /// spool as new records, so the bridge publishes them again with their original delivery
    /// ids: for a broker that acknowledged deliveries and then lost them. Prints the plan
    /// first. Changes the spool: refused while a bridge holds the lock (except --dry-run).
    Replay(ReplayArgs),
}

/// `hookbridge spool replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// First record to replay: a spool seq (a plain number), an RFC 3339 time
    /// (`2025-01-31T12:00:00Z`, records appended at or after it) or a duration ago (`15m`).
    #[arg(long, value_name = "T|SEQ")]
    pub since: String,
    /// Last record to replay (inclusive), in the same forms. Default: the newest.
    #[arg(long, value_name = "T|SEQ")]
    pub until: Option<String>,
    /// Only records whose `metadata.action` is exactly this.
    #[arg(long, value_name = "A")]
    pub action: Option<String>,
    /// Also replay dead letters in the range (they stay in the store).
    #[arg(long)]
    pub dead_letters: bool,
    /// Print the plan, change nothing. Safe while the bridge runs.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// List dead-lettered records. Read-only; safe while the bridge runs.
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put records back into the spool (appended and fsync'd, then removed from the store).
    /// Changes the spool: refused while a bridge holds the lock.
    Requeue(Selection),
}

/// Which dead letters to requeue: exactly one of these.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// Every dead letter with this delivery id.
    #[arg(long, value_name = "DELIVERY_ID")]
    pub id: Option<String>,
    /// The dead letter that had this spool seq.
    #[arg(long, value_name = "N")]
    pub seq: Option<u64>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded or (for changing commands) is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Reading the spool directory failed, or it does not exist.
    #[error(transparent)]
    Inspect(#[from] inspect::Error),
    /// Reading or changing the dead-letter store failed.
    #[error(transparent)]
    DeadLetters(#[from] deadletter::Error),
    /// A changing command found the spool locked: a bridge (or another tool) has it open.
    #[error("spool {} is locked: a running hookbridge (or another tool) has it open. Stop the bridge first (e.g. `systemctl stop hookbridge`), then run this again. Nothing was changed.", .0.display())]
    Locked(PathBuf),
    /// Opening or appending to the spool failed.
    #[error("spool {}: {source}", dir.display())]
    Spool {
        dir: PathBuf,
        #[source]
        source: spool::Error,
    },
    /// The command had nothing to do, or did only part of it; the message says what.
    #[error("{0}")]
    Refused(String),
    /// An argument could not be understood.
    #[error("{0}")]
    Usage(String),
    /// Writing to stdout failed.
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
}

impl Error {
    /// The process exit code this error means (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Locked(_) | Error::Refused(_) => 1,
            _ => 2,
        }
    }
}

/// Runs one `spool` command with stdout as `out`; returns the exit code.
pub fn run(args: SpoolArgs, mut config: Config, out: &mut dyn Write) -> Result<u8, Error> {
    if let Some(dir) = args.dir {
        config.spool.dir = dir;
    }
    let result = match args.command {
        SpoolCommand::Stats { json } => stats(&config, json, out),
        SpoolCommand::Verify => verify(&config, out),
        SpoolCommand::Inspect {
            action,
            since,
            limit,
            all,
        } => {
            let since_ms = since.as_deref().map(parse_since).transpose()?;
            let filter = Filter {
                action,
                since_ms,
                limit,
                all,
            };
            inspect_records(&config, &filter, out)
        }
        SpoolCommand::DeadLetter(DeadLetterCommand::List { json }) => list(&config, json, out),
        SpoolCommand::DeadLetter(DeadLetterCommand::Requeue(sel)) => requeue(config, &sel, out),
        SpoolCommand::Replay(args) => replay(config, &args, out),
    };
    match result {
        // `… | head` closing the pipe early is not a failure.
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        r => r,
    }
}

/// `writeln!` to the output, as an [`Error::Output`].
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(Error::Output)?
    };
}

fn survey(
    config: &Config,
    visit: &mut dyn FnMut(&inspect::RecordView<'_>) -> ControlFlow<()>,
) -> Result<Survey, Error> {
    // Only the directory: frames are judged by the spool format, never by today's limits.
    Ok(inspect::survey(&config.spool.dir, visit)?)
}

/// The record payload for a copy put back into the spool: the same delivery (id, body, receive
/// time), marked as a copy so its messages carry `hookbridge-copy` and `hookbridge-received-at`.
fn mark_copy(d: Delivery, how: CopyKind) -> Bytes {
    Delivery {
        copied: Some(Copied {
            how,
            at_ms: now_ms(),
        }),
        ..d
    }
    .encode()
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn age(ms: u64) -> Duration {
    Duration::from_secs(now_ms().saturating_sub(ms) / 1000)
}

fn bridge_state(lock: LockState) -> &'static str {
    match lock {
        LockState::Held => "running (spool lock held)",
        LockState::Free => "not running (spool lock free)",
        LockState::Unknown => "unknown (cannot read /proc/locks)",
    }
}

fn count_dead_letters(config: &Config) -> Result<u64, Error> {
    Ok(DeadLetters::open_existing(&config.spool.dir)?.map_or(0, |d| d.len()))
}

#[derive(Serialize)]
struct StatsJson {
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

fn stats(config: &Config, json: bool, out: &mut dyn Write) -> Result<u8, Error> {
    let s = survey(config, &mut |_| ControlFlow::Continue(()))?;
    let dead_letters = count_dead_letters(config)?;
    let damage = s.damage().count();
    if json {
        let j = StatsJson {
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
        };
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

fn verify(config: &Config, out: &mut dyn Write) -> Result<u8, Error> {
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

struct Filter {
    action: Option<String>,
    since_ms: Option<u64>,
    limit: Option<u64>,
    all: bool,
}

/// RFC 3339, or a duration meaning that long ago.
fn parse_since(s: &str) -> Result<u64, Error> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ms().saturating_sub(d.as_millis() as u64)),
        Err(_) => Err(Error::Usage(format!(
            "--since {s:?}: expected an RFC 3339 time (2025-01-31T12:00:00Z) or a duration ago (15m)"
        ))),
    }
}

#[derive(Serialize)]
struct RecordJson<'a> {
    seq: u64,
    appended_at: String,
    confirmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn inspect_records(config: &Config, f: &Filter, out: &mut dyn Write) -> Result<u8, Error> {
    let mut printed = 0u64;
    let mut write_err = None;
    if f.limit == Some(0) {
        return Ok(0);
    }
    let s = survey(config, &mut |r| {
        if (r.confirmed && !f.all) || f.since_ms.is_some_and(|t| r.appended_at_ms < t) {
            return ControlFlow::Continue(());
        }
        let delivery = Delivery::decode(Bytes::copy_from_slice(r.payload));
        if let Some(want) = &f.action {
            if delivery.as_ref().map_or(true, |d| &d.action != want) {
                return ControlFlow::Continue(());
            }
        }
        if let Err(e) = writeln!(out, "{}", record_line(r, &delivery)) {
            write_err = Some(e);
            return ControlFlow::Break(());
        }
        printed += 1;
        if f.limit.is_some_and(|l| printed >= l) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = write_err {
        return Err(Error::Output(e));
    }
    let damage = s.damage().count();
    if damage > 0 {
        eprintln!(
            "note: the scan skipped {damage} damaged region(s) or file(s); run `hookbridge spool verify`"
        );
    }
    Ok(0)
}

/// One JSON line. The body is embedded as JSON when it parses (whitespace removed, so the line
/// stays one line; keys, order and number spelling kept as sent), else as a string.
fn record_line(
    r: &inspect::RecordView<'_>,
    delivery: &Result<Delivery, crate::delivery::DecodeError>,
) -> String {
    let mut j = RecordJson {
        seq: r.seq,
        appended_at: rfc3339(r.appended_at_ms),
        confirmed: r.confirmed,
        id: None,
        action: None,
        resource_id: None,
        org_id: None,
        event_id: None,
        received_at: None,
        error: None,
    };
    let body = match delivery {
        Ok(d) => {
            j.id = Some(&d.id);
            j.action = Some(&d.action);
            j.resource_id = Some(&d.resource_id);
            j.org_id = d.org_id.as_deref();
            j.event_id = d.event_id.as_deref();
            j.received_at = Some(rfc3339(d.received_at_ms));
            Some(body_json(&d.body))
        }
        Err(e) => {
            j.error = Some(format!("payload is not a delivery record: {e}"));
            None
        }
    };
    let mut line = serde_json::to_string(&j).expect("record serializes");
    if let Some(body) = body {
        line.pop(); // the closing brace
        line.push_str(",\"body\":");
        line.push_str(&body);
        line.push('}');
    }
    line
}

fn body_json(body: &[u8]) -> String {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        // Valid JSON, hence valid UTF-8.
        minify(std::str::from_utf8(body).expect("JSON is UTF-8"))
    } else {
        serde_json::to_string(&String::from_utf8_lossy(body)).expect("string serializes")
    }
}

/// Drops insignificant whitespace from valid JSON.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_str = c == '"';
            out.push(c);
        }
    }
    out
}

#[derive(Serialize)]
struct DeadLetterJson<'a> {
    seq: u64,
    id: &'a str,
    action: &'a str,
    destination: &'a str,
    reason: &'a str,
    error: &'a str,
    dead_lettered_at: String,
}

fn list(config: &Config, json: bool, out: &mut dyn Write) -> Result<u8, Error> {
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
fn select(dl: &DeadLetters, sel: &Selection) -> Result<(Vec<Meta>, u64), Error> {
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

fn describe(sel: &Selection) -> String {
    match (&sel.id, sel.seq) {
        (Some(id), _) => format!("with delivery id {id:?}"),
        (None, Some(seq)) => format!("with seq {seq}"),
        _ => "at all".to_owned(),
    }
}

fn requeue(mut config: Config, sel: &Selection, out: &mut dyn Write) -> Result<u8, Error> {
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
fn requeue_locked(
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

/// One end of a replay range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
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
struct ReplayFilter {
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
struct Pick {
    seq: u64,
    at_ms: u64,
    action: String,
    dead_letter: bool,
    payload: Bytes,
}

/// The records `replay` selects, in original seq order, and how many unconfirmed records in
/// the range it leaves alone (the bridge still delivers those).
fn replay_plan(config: &Config, args: &ReplayArgs) -> Result<(Vec<Pick>, u64), Error> {
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

fn print_plan(picks: &[Pick], unconfirmed: u64, out: &mut dyn Write) -> Result<(), Error> {
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

/// Opens the spool for appending (taking its lock, running recovery) with a runtime to drive it;
/// a running bridge holds the lock, which is reported as [`Error::Locked`].
fn open_for_writing(
    cfg: spool::SpoolConfig,
    dir: &std::path::Path,
) -> Result<(Spool, tokio::runtime::Runtime), Error> {
    let (spool, _report) =
        Spool::open(cfg, Arc::new(Metrics::new())).map_err(|source| match source {
            spool::Error::Locked => Error::Locked(dir.to_owned()),
            source => Error::Spool {
                dir: dir.to_owned(),
                source,
            },
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Spool {
            dir: dir.to_owned(),
            source: spool::Error::Io(e),
        })?;
    Ok((spool, rt))
}

/// Replay re-appends copies: each selected record becomes a new record (new seq, same payload,
/// so the same delivery id), fsync'd, in the original order, and the bridge forwards it through
/// the normal path when it starts. Nothing is deleted, so a crash part-way leaves duplicates at
/// worst. The selected records are held in memory first (at most the spool's size), because
/// appending may evict the very segments they came from.
fn replay(config: Config, args: &ReplayArgs, out: &mut dyn Write) -> Result<u8, Error> {
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
    fn minify_keeps_strings_and_order() {
        assert_eq!(
            minify("{\n  \"b\": 1.50,\n  \"a\": \"x y\\\" z\",\n  \"c\": [ 1 , 2 ]\n}"),
            "{\"b\":1.50,\"a\":\"x y\\\" z\",\"c\":[1,2]}"
        );
        assert_eq!(body_json(b"not json"), "\"not json\"");
    }

    #[test]
    fn since_accepts_rfc3339_and_durations() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1000);
        let t = parse_since("15m").unwrap();
        let expect = now_ms() - 15 * 60 * 1000;
        assert!(t.abs_diff(expect) < 5000);
        assert!(matches!(parse_since("yesterday"), Err(Error::Usage(_))));
    }

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
