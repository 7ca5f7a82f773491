//! The changing `spool` commands through a running bridge: when a bridge holds the spool lock
//! (or `--admin` names one), `requeue`, `purge` and `replay` ask its admin API (`/api/v1/`) to do
//! the work with its own spool writer, and print what the offline path prints, with the same
//! exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::dead_letter::print_requeue;
use super::replay::{print_plan, stopped};
use super::Error;
use crate::cli::admin_client::{AdminClient, Call};
use crate::config::Config;
use crate::repair::{PlanSummary, ReplayRequest, RequeueReport, Selection};
use crate::spool::inspect::{self, LockState};

/// Most bytes of an answer read.
const MAX_ANSWER: usize = 64 << 20;
/// How long a requeue or purge may take on the bridge (each record is one fsync'd append).
const ACTION_TIMEOUT: Duration = Duration::from_secs(600);
const THEN: &str = "the running bridge forwards them";

/// Where the live path goes: `--admin` and `--token-file`, else the configuration's.
#[derive(Debug, Default)]
pub struct Target {
    pub admin: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl Target {
    /// Whether a changing command goes through a running bridge: `--admin` was given, or a
    /// bridge holds the spool's lock.
    pub fn wanted(&self, config: &Config) -> bool {
        self.admin.is_some()
            || (config.spool.dir.is_dir()
                && inspect::lock_state(&config.spool.dir) == LockState::Held)
    }
}

struct Live {
    client: AdminClient,
    token: String,
    /// `--admin` was given: failures are the caller's to fix (exit 2), not "locked".
    named: bool,
    dir: PathBuf,
}

impl Live {
    fn new(config: &Config, target: &Target) -> Result<Live, Error> {
        let dir = config.spool.dir.clone();
        let client = match &target.admin {
            Some(url) => AdminClient::for_url(url).ok_or_else(|| {
                Error::Usage(format!("--admin {url:?} is not an http://host:port URL"))
            })?,
            None => AdminClient::for_listener(config.admin.listen),
        };
        let named = target.admin.is_some();
        let Some(file) = target
            .token_file
            .as_ref()
            .or(config.admin.token_file.as_ref())
        else {
            return Err(locked(&dir, named, format!(
                "to repair it live, give the admin API token: admin.token_file in the configuration or --token-file (the bridge at {} needs it)",
                client.url()
            )));
        };
        let token = std::fs::read_to_string(file)
            .map_err(|e| {
                Error::Live(format!(
                    "cannot read the token file {}: {e}",
                    file.display()
                ))
            })?
            .trim()
            .to_owned();
        Ok(Live {
            client,
            token,
            named,
            dir,
        })
    }

    /// One API call; 2xx gives the JSON, a refusal the error of the offline path's kind.
    fn call(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let body = body.map(Value::to_string);
        let answer = self
            .client
            .send(Call {
                method,
                path: &format!("/api/v1/{path}"),
                token: Some(&self.token),
                body: body.as_deref(),
                timeout: ACTION_TIMEOUT,
                max_bytes: MAX_ANSWER,
            })
            .map_err(|e| {
                locked(
                    &self.dir,
                    self.named,
                    format!(
                        "its admin listener at {} did not answer: {e}",
                        self.client.url()
                    ),
                )
            })?;
        let v: Value = serde_json::from_slice(&answer.body).map_err(|_| {
            Error::Live(format!(
                "{} answered {} without the admin API's JSON: is it a hookbridge admin listener of this version?",
                self.client.url(),
                answer.status
            ))
        })?;
        let message = v["message"].as_str().unwrap_or("").to_owned();
        match (answer.status, v["error"].as_str().unwrap_or("")) {
            (200..=299, _) => Ok(v),
            (400, _) => Err(Error::Usage(message)),
            (401, _) => Err(Error::Live(format!(
                "the bridge at {} refused the token (401): check admin.token_file or --token-file",
                self.client.url()
            ))),
            (403, "no_token") => Err(locked(
                &self.dir,
                self.named,
                format!(
                    "the bridge at {} has no admin.token_file, so its admin API is off",
                    self.client.url()
                ),
            )),
            (404 | 409 | 413, _) => Err(Error::Refused(message)),
            (status, code) => Err(Error::Live(format!(
                "the bridge at {} answered {status} {code}: {message}",
                self.client.url()
            ))),
        }
    }
}

/// The offline path's "locked" refusal (exit 1), saying why the live path could not be taken;
/// with `--admin` the live path was asked for, so its failure is an error (exit 2).
fn locked(dir: &std::path::Path, named: bool, why: String) -> Error {
    if named {
        return Error::Live(why);
    }
    Error::Refused(format!(
        "spool {} is locked by a running hookbridge (or another tool), and {why}. Stop the bridge first (e.g. `systemctl stop hookbridge`) to repair offline. Nothing was changed.",
        dir.display()
    ))
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::Live(format!("unexpected answer: {e}")))
}

/// Posts a selection (plus `extra` fields) to `path` of the running bridge.
fn post_selection(
    config: &Config,
    target: &Target,
    sel: &Selection,
    path: &str,
    extra: Option<(&str, &str)>,
) -> Result<Value, Error> {
    sel.matcher(true)?;
    let live = Live::new(config, target)?;
    let mut body = serde_json::to_value(sel).expect("selection serializes");
    if let Some((k, v)) = extra {
        body[k] = json!(v);
    }
    live.call("POST", path, Some(&body))
}

pub(super) fn requeue(
    config: &Config,
    target: &Target,
    sel: &Selection,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let v = post_selection(config, target, sel, "dead-letters/requeue", None)?;
    print_requeue(&decode::<RequeueReport>(v)?, THEN, out)
}

pub(super) fn purge(
    config: &Config,
    target: &Target,
    sel: &Selection,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let extra = Some(("confirm", "purge"));
    let v = post_selection(config, target, sel, "dead-letters/purge", extra)?;
    say!(
        out,
        "purged {} dead letter(s)",
        v["purged"].as_u64().unwrap_or(0)
    );
    Ok(0)
}

pub(super) fn replay(
    config: &Config,
    target: &Target,
    request: &ReplayRequest,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    crate::repair::ReplayFilter::new(request)?;
    let live = Live::new(config, target)?;
    let body = serde_json::to_value(request).expect("request serializes");
    let v = match live.call("POST", "replay", Some(&body)) {
        Err(Error::Refused(m)) if m == "nothing to replay" => {
            say!(out, "replay: nothing selected");
            return Err(Error::Refused(m));
        }
        r => r?,
    };
    let plan: PlanSummary = decode(v["plan"].clone())?;
    print_plan(&plan, out)?;
    if request.dry_run {
        say!(out, "dry run: nothing changed");
        return Ok(0);
    }
    let job = v["job"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + ACTION_TIMEOUT;
    loop {
        let j = live.call("GET", &format!("replay/{job}"), None)?;
        match j["state"].as_str() {
            Some("done") => {
                say!(
                    out,
                    "replayed {} record(s) as spool seqs {}..={}; {THEN}",
                    j["appended"],
                    j["first_seq"],
                    j["last_seq"]
                );
                return Ok(0);
            }
            Some("failed") => {
                let done = j["appended"].as_u64().unwrap_or(0);
                let why = j["message"].as_str().unwrap_or("?");
                return Err(stopped(done, plan.records, why, out));
            }
            _ if Instant::now() > deadline => {
                return Err(Error::Live(format!("replay job {job} still running after {ACTION_TIMEOUT:?}; see GET /api/v1/replay/{job}")));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
