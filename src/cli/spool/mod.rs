//! `hookbridge spool …`: operator tools for the spool and the dead-letter store.
//!
//! Two kinds of command, and the line between them is the spool lock:
//! * **read-only** (`stats`, `verify`, `inspect`, `dead-letter list`, `replay --dry-run`) never
//!   take the lock and never create, truncate, move or delete a file, so they are safe next to a
//!   running bridge. They read through [`crate::spool::inspect`].
//! * **changing** (`dead-letter requeue`, `dead-letter purge`, `replay`): with the bridge
//!   stopped they open the [`Spool`], which takes the lock. While a bridge holds the lock (or
//!   with `--admin`) they ask that bridge to do the same work through its admin API
//!   (`live.rs`): the running bridge appends through its own spool writer. Output and exit codes
//!   are the same either way. The work itself is [`crate::repair`]'s on both paths.
//!
//! Exit codes, for every `spool` command: 0 done (for `verify`: no damage); 1 `verify` found
//! damage, or a changing command was refused (lock held, nothing selected, a record it could not
//! requeue, the spool full part-way through a replay, the bridge busy with another repair); 2
//! could not run (configuration, no such directory, I/O error, bad arguments, a wrong token).
//!
//! One file per command: `stats.rs` (`stats`, `verify`), `records.rs` (`inspect`),
//! `dead_letter.rs` (`dead-letter list`, `requeue`, `purge`), `replay.rs`, `live.rs` (the same
//! through a running bridge); this file holds the arguments, the errors and what they share.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::config::{self, Config};
use crate::deadletter::{self, DeadLetters};
use crate::metrics::Metrics;
use crate::repair;
use crate::spool::inspect::{self, LockState, Survey};
use crate::spool::{self, Spool};

/// `hookbridge spool [--dir PATH] <command>`.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {
    /// Spool directory; overrides `spool.dir` from the configuration.
    #[arg(long, global = true, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Changing commands: ask the running bridge at this admin URL (`http://127.0.0.1:9090`)
    /// instead of opening the spool. Default: the bridge of `admin.listen` when one holds the
    /// spool lock, else the offline path.
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// The admin API token for the live path; default `admin.token_file`.
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
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
    /// first. While a bridge runs, the running bridge does it (its admin API, with the token of
    /// `admin.token_file`); otherwise it opens the spool itself.
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
    /// While a bridge runs, the running bridge does it through its own spool writer (its admin
    /// API, with the token of `admin.token_file`); otherwise this opens the spool itself.
    Requeue(SelectArgs),
    /// Delete records from the store for good (after deciding they are not wanted). Live or
    /// offline like `requeue`.
    Purge {
        #[command(flatten)]
        select: SelectArgs,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters: every given criterion must hold; `--all` stands alone.
#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// The dead letter that had this spool seq (repeatable).
    #[arg(long, value_name = "N")]
    pub seq: Vec<u64>,
    /// Dead letters with this delivery id.
    #[arg(long, value_name = "DELIVERY_ID")]
    pub id: Option<String>,
    /// Dead letters with this reason (`too_large`, `topic_authorization_failed`, …).
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// Dead letters with this `metadata.action`.
    #[arg(long, value_name = "A")]
    pub action: Option<String>,
    /// Dead letters for this subject or topic.
    #[arg(long, value_name = "D")]
    pub destination: Option<String>,
    /// Dead-lettered at or after T (RFC 3339 or a duration ago, `1h`).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Dead-lettered at or before T.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

impl SelectArgs {
    pub fn selection(&self) -> repair::Selection {
        repair::Selection {
            seq: self.seq.clone(),
            id: self.id.clone(),
            reason: self.reason.clone(),
            action: self.action.clone(),
            destination: self.destination.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            all: self.all,
        }
    }
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
    /// The running bridge could not be asked (unreachable, no or a wrong token, an answer that is
    /// not the admin API's); the message says what to do.
    #[error("{0}")]
    Live(String),
}

impl From<repair::Error> for Error {
    fn from(e: repair::Error) -> Self {
        match e {
            repair::Error::DeadLetters(e) => Error::DeadLetters(e),
            repair::Error::Inspect(e) => Error::Inspect(e),
            repair::Error::Usage(m) => Error::Usage(m),
        }
    }
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
    let live = live::Target {
        admin: args.admin,
        token_file: args.token_file,
    };
    let result = match args.command {
        SpoolCommand::Stats { json } => stats(&config, json, out),
        SpoolCommand::Verify => verify(&config, out),
        SpoolCommand::Inspect {
            action,
            since,
            limit,
            all,
        } => {
            let since_ms = since
                .as_deref()
                .map(|s| repair::parse_time("--since", s))
                .transpose()?;
            let filter = Filter {
                action,
                since_ms,
                limit,
                all,
            };
            inspect_records(&config, &filter, out)
        }
        SpoolCommand::DeadLetter(DeadLetterCommand::List { json }) => list(&config, json, out),
        SpoolCommand::DeadLetter(DeadLetterCommand::Requeue(sel)) => {
            requeue(config, &live, &sel.selection(), out)
        }
        SpoolCommand::DeadLetter(DeadLetterCommand::Purge { select, yes }) => {
            purge(config, &live, &select.selection(), yes, out)
        }
        SpoolCommand::Replay(args) => replay(config, &live, &args, out),
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

mod dead_letter;
mod live;
mod records;
mod replay;
mod stats;

use dead_letter::{list, purge, requeue};
use records::{inspect_records, Filter};
use replay::replay;
use stats::{stats, verify};

fn survey(
    config: &Config,
    visit: &mut dyn FnMut(&inspect::RecordView<'_>) -> ControlFlow<()>,
) -> Result<Survey, Error> {
    // Only the directory: frames are judged by the spool format, never by today's limits.
    Ok(inspect::survey(&config.spool.dir, visit)?)
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
