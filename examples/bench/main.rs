//! The benchmark of issue #9: one command (`benches/run`, which builds and runs this driver
//! against the release binary), everything on one machine in one go, ratios taken in the same
//! run. Prints a markdown table and writes a JSON file.
//!
//! ```text
//! benches/run                 # full run (~7 min)
//! benches/run --smoke         # seconds per scenario, small backlog (CI)
//! bench --bin target/release/hookbridge --out target/bench/results.json [--smoke] [--only a,b]
//! ```
//!
//! Scenarios (names for `--only`): `ceiling` (a no-op server on the bridge's own runtime and
//! accept loop, run before and after everything else), `spool` (ack throughput, broker
//! unreachable, 64 connections), `signed` (the same with Standard Webhooks signatures),
//! `open` (fixed rate at 0.4 × the ceiling, latency from the intended send time), `nats` and
//! `kafka` (end to end for a sustained period beside the broker-alone ceiling), `replay` (a
//! backlog drained to each broker; startup with it and a full de-duplication window),
//! `endpoints` (`spool` with four endpoints posted round-robin against one, in alternating
//! pairs).
//! Peak RSS (`VmHWM`) of the bridge is recorded in every scenario.
//!
//! The bridge, a private nats-server (never the one on 4222) and tansu are started here on free
//! loopback ports, in a fresh directory under `--work` (put it on a real disk, not tmpfs; its
//! filesystem is reported).

mod brokers;
// The test harness's ports and program lookup (one copy for the tests and the benchmark).
#[allow(dead_code)]
#[path = "../../tests/common/child.rs"]
mod child;
mod load;
mod procs;
mod report;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use load::{closed_loop, open_loop, Fixture, LoadResult, Requests, Until};
use procs::{Bridge, BridgeConfig, Sink};

/// The connections of the closed-loop runs (the issue's wrk runs: 64 keep-alive connections).
const CONNS: usize = 64;
/// The open loop's pool: enough that a busy connection rarely delays a due request.
const OPEN_CONNS: usize = 256;
/// Endpoints of the bridge compared with the single-endpoint one, and how many rounds of runs
/// compare them.
const ENDPOINTS: usize = 4;
const ENDPOINT_PAIRS: usize = 3;
/// Open-loop rate as a fraction of the ceiling measured before the subjects.
const OPEN_FRACTION: f64 = 0.4;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MIB: f64 = 1024.0 * 1024.0;

struct Params {
    smoke: bool,
    closed: Duration,
    sustained: Duration,
    alone: Duration,
    backlog: u64,
}

impl Params {
    fn new(smoke: bool) -> Params {
        if smoke {
            Params {
                smoke,
                closed: Duration::from_secs(1),
                sustained: Duration::from_secs(2),
                alone: Duration::from_secs(1),
                backlog: 5_000,
            }
        } else {
            Params {
                smoke,
                closed: Duration::from_secs(10),
                sustained: Duration::from_secs(60),
                alone: Duration::from_secs(10),
                backlog: 1_000_000,
            }
        }
    }
}

struct Args {
    bin: PathBuf,
    out: PathBuf,
    work: PathBuf,
    fixture: PathBuf,
    only: Option<Vec<String>>,
    params: Params,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--smoke] [--bin HOOKBRIDGE] [--out results.json] [--work DIR] \
         [--fixture FILE] [--only ceiling,spool,signed,open,nats,kafka,replay,endpoints]\n       \
         bench --noop-server ADDR"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/bench → target/<profile>/hookbridge
    let mut a = Args {
        bin: exe
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("hookbridge"),
        out: manifest.join("target/bench/results.json"),
        work: manifest.join("target/bench/work"),
        fixture: manifest.join("examples/fixtures/session.updated.json"),
        only: None,
        params: Params::new(false),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--noop-server" => {
                procs::run_noop_server(&value());
                std::process::exit(0);
            }
            "--smoke" => a.params = Params::new(true),
            "--bin" => a.bin = value().into(),
            "--out" => a.out = value().into(),
            "--work" => a.work = value().into(),
            "--fixture" => a.fixture = value().into(),
            "--only" => a.only = Some(value().split(',').map(str::to_owned).collect()),
            _ => usage(),
        }
    }
    a
}

/// Everything measured, as JSON, plus the run's context.
struct Run {
    args: Args,
    fixture: Fixture,
    dir: PathBuf,
    results: serde_json::Map<String, Value>,
    n: u32,
}

impl Run {
    fn wants(&self, name: &str) -> bool {
        self.args
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    }

    /// A fresh directory for one scenario's spool, broker store and logs.
    fn scenario_dir(&mut self, name: &str) -> PathBuf {
        self.n += 1;
        let d = self.dir.join(format!("{:02}-{name}", self.n));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn requests(&self, addr: std::net::SocketAddr, tag: &str) -> Requests {
        self.requests_to(addr, tag, &[procs::INGRESS_PATH])
    }

    /// Requests posted to `paths` in turn.
    fn requests_to(&self, addr: std::net::SocketAddr, tag: &str, paths: &[&str]) -> Requests {
        let run = format!("{}{}{tag}", std::process::id(), self.n);
        Requests::round_robin(self.fixture.clone(), addr, paths, &run)
    }

    fn record(&mut self, key: &str, v: Value) {
        eprintln!("bench: {key}: {v}");
        self.results.insert(key.to_owned(), v);
    }

    fn get(&self, key: &str, field: &str) -> Option<f64> {
        self.results.get(key)?.get(field)?.as_f64()
    }
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn latency_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    json!({
        "p50_ms": ms(h, 0.5),
        "p99_ms": ms(h, 0.99),
        "p99_9_ms": ms(h, 0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

fn load_json(r: &LoadResult) -> Value {
    json!({
        "ok": r.ok,
        "errors": r.errors,
        "statuses": r.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "seconds": r.elapsed.as_secs_f64(),
        "per_s": r.rate(),
        "latency": latency_json(&r.latency),
    })
}

fn rss_json(pid: u32) -> Value {
    let (hwm, rss) = procs::memory(pid);
    json!({"peak_rss_mib": hwm as f64 / MIB, "rss_mib": rss as f64 / MIB})
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// A JetStream URL where nothing listens: the bridge keeps accepting into the spool.
fn unreachable_nats() -> String {
    format!("nats://127.0.0.1:{}", procs::free_port())
}

async fn ceiling(run: &mut Run, key: &str) {
    let server = procs::noop_server().await;
    let reqs = Arc::new(run.requests(server.addr, key));
    let r = closed_loop(
        server.addr,
        CONNS,
        Until::Time(run.args.params.closed),
        reqs,
    );
    let v = merge(load_json(&r), rss_json(server.pid()));
    run.record(key, v);
}

/// The bridge with the broker unreachable, 64 connections, closed loop: acks/s. The bridge has
/// `endpoints` endpoints, and the requests go in turn to those numbered in `to`.
async fn spool_only(
    run: &mut Run,
    key: &str,
    signed: bool,
    endpoints: usize,
    to: std::ops::Range<usize>,
) {
    let dir = run.scenario_dir(key);
    let bridge = Bridge::start_with_endpoints(
        &run.args.bin,
        &BridgeConfig {
            spool: &dir.join("spool"),
            sink: Sink::Nats(unreachable_nats()),
            secret: signed.then_some(SECRET),
            log: &dir.join("bridge.log"),
        },
        endpoints,
    )
    .await;
    let paths: Vec<String> = to.clone().map(procs::endpoint_path).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut reqs = run.requests_to(bridge.http, key, &paths);
    let mut presigned = Value::Null;
    if signed {
        // Enough for 1.5 × the unsigned rate over the run; a run that uses them all stops early.
        let rate = run.get("spool_only", "per_s").unwrap_or(30_000.0);
        let count = (rate * 1.5 * run.args.params.closed.as_secs_f64()).max(2_000.0) as u64;
        let t = Instant::now();
        reqs.presign(SECRET, count);
        presigned = json!({"presigned": count, "presign_seconds": t.elapsed().as_secs_f64()});
    }
    let r = closed_loop(
        bridge.http,
        CONNS,
        Until::Time(run.args.params.closed),
        Arc::new(reqs),
    );
    let mut v = merge(load_json(&r), rss_json(bridge.pid()));
    v = merge(
        v,
        json!({"spool_records": bridge.metric("hookbridge_spool_records").await}),
    );
    if signed {
        v = merge(v, presigned);
    }
    bridge.stop();
    // Up to a gigabyte each, and nothing reads it again: the alternating runs of `endpoints`
    // would otherwise hold several at once.
    let _ = std::fs::remove_dir_all(dir.join("spool"));
    let posted_to: Vec<String> = to.map(procs::endpoint_path).collect();
    run.record(
        key,
        merge(v, json!({"endpoints": endpoints, "posted_to": posted_to})),
    );
}

/// Issue 26: what several endpoints cost the ingress. `spool` against a bridge with the
/// default endpoint only, and against one with [`ENDPOINTS`] endpoints posted round-robin over
/// their paths and posted only to the last one (the longest path lookup); in rounds, each
/// starting with another of the three so drift on a shared machine hits all; the means.
async fn endpoints(run: &mut Run) {
    let rounds = if run.args.params.smoke {
        1
    } else {
        ENDPOINT_PAIRS
    };
    // (key, endpoints of the bridge, the endpoints posted to)
    let variants = [
        ("one", 1, 0..1),
        ("round_robin", ENDPOINTS, 0..ENDPOINTS),
        ("last", ENDPOINTS, ENDPOINTS - 1..ENDPOINTS),
    ];
    for round in 0..rounds {
        // A different one first in each round, so drift does not favour one of them.
        for i in 0..variants.len() {
            let (name, n, to) = variants[(i + round) % variants.len()].clone();
            let key = format!("endpoints_{name}_{round}");
            spool_only(run, &key, false, n, to).await;
        }
    }
    let mean = |run: &Run, name: &str, field: &dyn Fn(&Value) -> Option<f64>| {
        let xs: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                run.results
                    .get(&format!("endpoints_{name}_{r}"))
                    .and_then(field)
            })
            .collect();
        xs.iter().sum::<f64>() / xs.len() as f64
    };
    let per_s = |v: &Value| v["per_s"].as_f64();
    let p99 = |v: &Value| v["latency"]["p99_ms"].as_f64();
    let mut v = json!({"endpoints": ENDPOINTS, "rounds": rounds});
    for (name, _, _) in &variants {
        v[format!("{name}_per_s")] = json!(mean(run, name, &per_s));
        v[format!("{name}_p99_ms")] = json!(mean(run, name, &p99));
    }
    run.record("endpoints", v);
}

/// Open loop at a fixed rate: latency from the intended send time, missed send slots. The
/// issue's rate is 0.4 × the ceiling; when that is above what the bridge sustains, the latency
/// only says so (it grows with the run), so a second run at half the measured durable-ack rate
/// shows the latency below saturation.
async fn open(run: &mut Run) {
    let Some(ceiling) = run.get("ceiling_before", "per_s") else {
        eprintln!("bench: open loop needs the ceiling; skipped");
        return;
    };
    // The same load on the no-op server first: what the generator and the machine add to any
    // subject's latency at this rate (the floor the bridge's figures are read against).
    open_noop(run, "open_loop_noop", ceiling * OPEN_FRACTION).await;
    open_at(run, "open_loop", ceiling * OPEN_FRACTION).await;
    if let Some(acks) = run.get("spool_only", "per_s") {
        open_at(run, "open_loop_half_acks", acks * 0.5).await;
    }
}

async fn open_noop(run: &mut Run, key: &str, rate: f64) {
    let server = procs::noop_server().await;
    let v = open_json(run, key, server.addr, rate);
    let v = merge(v, rss_json(server.pid()));
    run.record(key, v);
}

async fn open_at(run: &mut Run, key: &str, rate: f64) {
    let dir = run.scenario_dir(key);
    let bridge = Bridge::start(
        &run.args.bin,
        &BridgeConfig {
            spool: &dir.join("spool"),
            sink: Sink::Nats(unreachable_nats()),
            secret: None,
            log: &dir.join("bridge.log"),
        },
    )
    .await;
    let v = open_json(run, key, bridge.http, rate);
    // The bridge's own view (request head → 2xx, fsync included), from its histograms: what
    // the latency above adds on top of it is queueing in the kernel and waiting for a core.
    let m = bridge.metrics().await;
    let bounds = |name: &str| {
        let ms = |q| procs::bucket_quantile(&m, name, q).map(|s| s * 1000.0);
        json!({"p99": ms(0.99), "p99_9": ms(0.999)})
    };
    let v = merge(
        v,
        json!({
            "bridge_ack_ms_bucket": bounds("hookbridge_ack_latency_seconds"),
            "fsync_ms_bucket": bounds("hookbridge_spool_fsync_seconds"),
        }),
    );
    let v = merge(v, rss_json(bridge.pid()));
    bridge.stop();
    run.record(key, v);
}

/// CPU time the hypervisor gave to others while this VM's vCPUs wanted it (`steal` in
/// `/proc/stat`, all CPUs), in milliseconds; 0 where the kernel does not report it.
fn steal_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // USER_HZ is 100 on every Linux this runs on.
    ticks * 10.0
}

/// One open-loop run at `rate` against `addr`.
fn open_json(run: &Run, key: &str, addr: std::net::SocketAddr, rate: f64) -> Value {
    let rate = rate.max(100.0);
    let reqs = Arc::new(run.requests(addr, key));
    let steal = steal_ms();
    let r = open_loop(addr, OPEN_CONNS, rate, run.args.params.closed, reqs);
    let steal = steal_ms() - steal;
    merge(
        load_json(&r),
        json!({
            "rate_target": rate,
            "connections": OPEN_CONNS,
            "missed_slots": r.missed,
            "steal_ms": steal,
            "service": latency_json(&r.service),
            "send_lateness": latency_json(&r.lateness),
        }),
    )
}

/// A broker of `kind` (`nats`: a private nats-server storing under `dir`; `kafka`: tansu) and
/// the bridge's sink setting for it.
async fn start_broker(kind: &str, dir: &Path) -> (procs::Service, Sink) {
    if kind == "nats" {
        let nats = procs::nats_server(&dir.join("nats")).await;
        let url = format!("nats://{}", nats.addr);
        (nats, Sink::Nats(url))
    } else {
        let tansu = procs::tansu().await;
        let b = tansu.addr.to_string();
        (tansu, Sink::Kafka(b))
    }
}

/// End to end for `sustained`: closed-loop load on the bridge while it forwards to the broker;
/// `/metrics` sampled every second for what the broker confirmed and the backlog. Beside it,
/// the broker alone, on a broker of its own.
async fn end_to_end(run: &mut Run, kind: &str) {
    let dir = run.scenario_dir(&format!("{kind}-alone"));
    let alone_rate = broker_alone(run, kind, &dir).await;
    let dir = run.scenario_dir(kind);
    let (_broker, sink) = start_broker(kind, &dir).await;
    let bridge = Bridge::start(
        &run.args.bin,
        &BridgeConfig {
            spool: &dir.join("spool"),
            sink,
            secret: None,
            log: &dir.join("bridge.log"),
        },
    )
    .await;
    let reqs = Arc::new(run.requests(bridge.http, kind));
    let addr = bridge.http;
    let published0 = bridge.metric("hookbridge_published_total").await;
    let start = Instant::now();
    let sustained = run.args.params.sustained;
    let load =
        tokio::task::spawn_blocking(move || closed_loop(addr, CONNS, Until::Time(sustained), reqs));
    // (seconds, published, backlog)
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = bridge.metrics().await;
        samples.push((
            start.elapsed().as_secs_f64(),
            procs::metric(&m, "hookbridge_published_total") - published0,
            procs::metric(&m, "hookbridge_spool_records"),
        ));
    }
    let r = load.await.unwrap();
    let m = bridge.metrics().await;
    let published = procs::metric(&m, "hookbridge_published_total") - published0;
    let backlog_end = procs::metric(&m, "hookbridge_spool_records");
    let v = merge(
        load_json(&r),
        forwarding_json(&samples, r.elapsed, published, backlog_end, alone_rate),
    );
    let v = merge(v, rss_json(bridge.pid()));
    bridge.stop();
    run.record(&format!("{kind}_e2e"), v);
}

/// The broker of `kind` alone, publishing from the Rust client: its rate, recorded too.
async fn broker_alone(run: &mut Run, kind: &str, dir: &Path) -> f64 {
    let (_broker, sink) = start_broker(kind, dir).await;
    let alone = run.args.params.alone;
    let r = match &sink {
        Sink::Nats(url) => brokers::nats(url, &run.fixture, alone).await,
        Sink::Kafka(b) => brokers::kafka(b, &run.fixture, alone).await,
    };
    run.record(
        &format!("{kind}_alone"),
        json!({"confirmed": r.confirmed, "seconds": r.elapsed.as_secs_f64(),
               "per_s": r.rate(), "window": brokers::WINDOW}),
    );
    r.rate()
}

/// What the broker confirmed over a load of `elapsed` and how the backlog behaved, from the
/// per-second `samples` (seconds, published, backlog).
fn forwarding_json(
    samples: &[(f64, f64, f64)],
    elapsed: Duration,
    published: f64,
    backlog_end: f64,
    alone_rate: f64,
) -> Value {
    let secs = elapsed.as_secs_f64();
    let max_backlog = samples.iter().map(|s| s.2).fold(backlog_end, f64::max);
    // Growth over the second half: a bounded backlog does not grow with time.
    let half = samples
        .iter()
        .find(|s| s.0 >= secs / 2.0)
        .map_or(0.0, |s| s.2);
    let growth = (backlog_end - half) / (secs / 2.0);
    let confirmed_rate = published / secs;
    json!({
        "confirmed": published,
        "confirmed_per_s": confirmed_rate,
        "ratio_to_alone": confirmed_rate / alone_rate,
        "max_backlog": max_backlog,
        "backlog_end": backlog_end,
        "backlog_growth_per_s_second_half": growth,
        "backlog_bounded": growth < 0.01 * confirmed_rate.max(1.0),
        "load": "full closed loop, 64 connections",
        "samples": samples.iter().map(|s| json!([s.0, s.1, s.2])).collect::<Vec<_>>(),
    })
}

/// Replay: fill a backlog with the broker unreachable (so the de-duplication journal holds as
/// many ids), copy the spool for the second broker, then for each broker start the bridge on
/// the backlog (startup = exec → `/readyz` 200) and time the drain from `/readyz` until
/// `hookbridge_published_total` covers the backlog.
async fn replay(run: &mut Run) {
    let dir = run.scenario_dir("replay");
    let spool = dir.join("spool");
    let records = fill_backlog(run, &dir, &spool).await;
    // The same backlog for the second broker: a copy made while no bridge runs.
    let copy = dir.join("spool-kafka");
    let t = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&spool)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "copying the spool");
    eprintln!("bench: spool copied in {:.1} s", t.elapsed().as_secs_f64());
    for (kind, spool) in [("nats", spool), ("kafka", copy)] {
        let v = drain_backlog(run, kind, &dir.join(kind), &spool, records).await;
        run.record(&format!("replay_{kind}"), v);
    }
}

/// Appends `backlog` deliveries into `spool` with the broker unreachable; records how that
/// went and returns how many records the spool holds.
async fn fill_backlog(run: &mut Run, dir: &Path, spool: &Path) -> f64 {
    let bridge = Bridge::start(
        &run.args.bin,
        &BridgeConfig {
            spool,
            sink: Sink::Nats(unreachable_nats()),
            secret: None,
            log: &dir.join("bridge.log"),
        },
    )
    .await;
    let reqs = Arc::new(run.requests(bridge.http, "replay"));
    let r = closed_loop(
        bridge.http,
        CONNS,
        Until::Count(run.args.params.backlog),
        reqs,
    );
    let records = bridge.metric("hookbridge_spool_records").await;
    let v = merge(
        merge(load_json(&r), rss_json(bridge.pid())),
        json!({"spool_records": records}),
    );
    bridge.stop();
    let journal = std::fs::metadata(spool.join("dedup.journal")).map_or(0, |m| m.len());
    let v = merge(v, json!({"dedup_journal_bytes": journal}));
    run.record("replay_fill", v);
    records
}

/// Starts the bridge on the backlog in `spool` (`records` of them) beside a broker of `kind`
/// and times its startup and the drain.
async fn drain_backlog(run: &Run, kind: &str, bdir: &Path, spool: &Path, records: f64) -> Value {
    std::fs::create_dir_all(bdir).unwrap();
    let (_broker, sink) = start_broker(kind, bdir).await;
    // Nothing left for the kernel to write back when the clock starts: not the spool copy,
    // nor the broker store of the scenario before, whose writeback slows a startup.
    let status = std::process::Command::new("sync").status().unwrap();
    assert!(status.success(), "sync before starting the bridge");
    let bridge = Bridge::start(
        &run.args.bin,
        &BridgeConfig {
            spool,
            sink,
            secret: None,
            log: &bdir.join("bridge.log"),
        },
    )
    .await;
    let ready = Instant::now();
    let deadline = ready + Duration::from_secs(900);
    let mut published = 0.0;
    while published < records && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        published = bridge.metric("hookbridge_published_total").await;
    }
    let drain = ready.elapsed();
    let v = merge(
        json!({
            "startup_s": bridge.startup.as_secs_f64(),
            "records": records,
            "published": published,
            "drain_seconds": drain.as_secs_f64(),
            "per_s": published / drain.as_secs_f64(),
            "complete": published >= records,
        }),
        rss_json(bridge.pid()),
    );
    bridge.stop();
    v
}

fn main() {
    // Before any runtime: `--noop-server` builds its own (the bridge's) runtime.
    let args = parse_args();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(args));
}

async fn bench(args: Args) {
    let fixture = Fixture::load(&args.fixture);
    std::fs::create_dir_all(&args.work).unwrap();
    let dir = args.work.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    check_programs(&args);
    let load_before = report::loadavg();
    let started = Instant::now();
    let mut run = Run {
        args,
        fixture,
        dir: dir.clone(),
        results: Default::default(),
        n: 0,
    };
    run_scenarios(&mut run).await;
    report::report(&run, &load_before, started);
    // Spools and broker stores of a full run take gigabytes.
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails before minutes of work, not in the middle: the bridge binary and the brokers the
/// chosen scenarios need are there.
fn check_programs(args: &Args) {
    assert!(
        args.bin.is_file(),
        "{}: no hookbridge binary (benches/run builds it)",
        args.bin.display()
    );
    let needs = [
        (
            ["nats", "replay"],
            procs::nats_server_bin(),
            "apt-get install nats-server",
        ),
        (
            ["kafka", "replay"],
            procs::tansu_bin(),
            "scripts/test installs it",
        ),
    ];
    for (wanted, bin, hint) in needs {
        let wanted = args
            .only
            .as_ref()
            .is_none_or(|o| wanted.iter().any(|w| o.iter().any(|x| x == w)));
        assert!(
            !wanted || bin.is_file(),
            "{} not found ({hint})",
            bin.display()
        );
    }
}

/// Every scenario `--only` selects, in order, the ceiling first and last.
async fn run_scenarios(run: &mut Run) {
    if run.wants("ceiling") {
        ceiling(run, "ceiling_before").await;
    }
    if run.wants("spool") || run.wants("signed") {
        spool_only(run, "spool_only", false, 1, 0..1).await;
    }
    if run.wants("signed") {
        spool_only(run, "spool_signed", true, 1, 0..1).await;
    }
    if run.wants("endpoints") {
        endpoints(run).await;
    }
    if run.wants("open") {
        open(run).await;
    }
    for kind in ["nats", "kafka"] {
        if run.wants(kind) {
            end_to_end(run, kind).await;
        }
    }
    if run.wants("replay") {
        replay(run).await;
    }
    if run.wants("ceiling") {
        ceiling(run, "ceiling_after").await;
    }
}
