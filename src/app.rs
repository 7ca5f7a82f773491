//! Wires the pieces together: spool, ingress and admin listeners, sink, forwarder, and the order
//! in which they stop.
//!
//! Shutdown order matters for the 2xx promise: first the ingress stops accepting and lets every
//! in-flight request finish its fsync and get its answer; then the forwarder stops reading and
//! lets in-flight publishes resolve; then the spool persists the confirmed position; the admin
//! listener goes last so the process stays observable while it drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{Admin, AdminService};
use crate::clock::Clock;
use crate::config::{self, Config, SinkKind};
use crate::deadletter::DeadLetters;
use crate::dedup::Dedup;
use crate::endpoint::Endpoints;
use crate::forward::{self, Forwarder};
use crate::ingress::{Ingress, IngressService};
use crate::metrics::Metrics;
use crate::server::{self, Limits, TlsAccept};
use crate::sink::{kafka::KafkaSink, nats::NatsSink, BrokerStatus, Sink};
use crate::spool::{self, RealFs, Spool, SpoolConfig, SpoolFs};
use crate::tls::Tls;

/// How long a failed spool is given to drain its committed records before the process exits.
const FAILED_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Bytes a spool frame and the delivery metadata add around a body, at most.
const RECORD_OVERHEAD: u32 = 8 * 1024;

// Invariant 3: every record any valid configuration can append is one the spool's format reads
// back. Raising `config::MAX_BODY_BYTES` past this is a spool format change, not a config tweak.
const _: () = assert!(
    config::MAX_BODY_BYTES as u64 + RECORD_OVERHEAD as u64 <= spool::MAX_RECORD_BYTES as u64,
    "the largest http.max_body_bytes plus RECORD_OVERHEAD must fit the spool format's MAX_RECORD_BYTES"
);

/// What the bridge runs with: the configuration, checked, and what is built from it by the
/// modules that own those things. `config` knows nothing of them; this is where they meet.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    /// Every endpoint's path, access checks (token, signatures, source addresses), routing and
    /// CloudEvents attributes, `default` first.
    pub endpoints: Arc<Endpoints>,
    /// The ingress listener's certificate, loaded; `None` serves plain HTTP.
    pub tls: Option<Tls>,
    /// `admin.token_file`, read; `None` leaves the admin API off.
    pub admin_token: Option<std::sync::Arc<crate::admin::auth::Token>>,
}

impl Settings {
    /// Validates `config` ([`Config::validate`]), then builds the endpoints (reading the secret
    /// files) and the TLS certificate (reading the certificate and key). Every error names its configuration key. `run`, `check-config` and
    /// `spool dead-letter requeue` all go through this, so they accept the same configurations.
    pub fn new(config: Config) -> Result<Settings, config::Error> {
        config.validate()?;
        let endpoints = Arc::new(Endpoints::from_config(&config)?);
        let tls = Tls::from_config(&config.http.tls)?;
        let admin_token = crate::admin::auth::Token::from_config(&config.admin)?.map(Arc::new);
        Ok(Settings {
            raw: config,
            endpoints,
            tls,
            admin_token,
        })
    }
}

/// The spool settings the bridge runs with. `max_append_bytes` follows today's
/// `http.max_body_bytes` and limits new appends only: what is already on disk is judged by the
/// spool format's own bound, so lowering the body limit never strands a backlog.
pub fn spool_config(c: &Config) -> SpoolConfig {
    SpoolConfig {
        dir: c.spool.dir.clone(),
        segment_bytes: c.spool.segment_bytes,
        max_bytes: c.spool.max_bytes,
        max_append_bytes: c.http.max_body_bytes.saturating_add(RECORD_OVERHEAD),
        max_batch_bytes: c.spool.max_batch_bytes,
        preallocate_bytes: c.spool.preallocate_bytes,
        confirm_interval: c.spool.confirm_interval,
        min_free_bytes: c.spool.min_free_bytes,
        retain_confirmed: c.spool.retain_confirmed,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool could not be opened (locked by another process, unreadable directory...).
    #[error("spool {dir}: {source}")]
    Spool {
        dir: String,
        #[source]
        source: spool::Error,
    },
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The sink could not be set up (bad URL, credentials or client options; an unreachable
    /// broker is not an error).
    #[error("sink: {0}")]
    Sink(String),
    /// The spool failed (write or fsync error) while running; the process stopped after draining
    /// so that a supervisor restarts it and recovery re-reads the disk.
    #[error("the spool failed; exiting so that a restart recovers it")]
    SpoolFailed,
    /// The de-duplication journal inside the spool directory could not be opened.
    #[error("de-duplication journal: {0}")]
    Dedup(String),
    /// The dead-letter store inside the spool directory could not be opened.
    #[error("{0}")]
    DeadLetters(#[from] crate::deadletter::Error),
}

/// A bound, ready-to-run bridge.
pub struct App {
    settings: Settings,
    ingress: TcpListener,
    admin: TcpListener,
    spool: Spool,
    sink: Arc<dyn Sink>,
    broker: Arc<BrokerStatus>,
    dead_letters: Arc<DeadLetters>,
    dedup: Option<Arc<Dedup>>,
    metrics: Arc<Metrics>,
}

impl App {
    /// Opens the spool (recovering it), binds both listeners and sets up the sink. Port 0 binds a
    /// free port; see [`App::http_addr`].
    pub async fn bind(settings: Settings) -> Result<App, Error> {
        App::bind_with_fs(settings, Arc::new(RealFs)).await
    }

    /// [`App::bind`] with every file in the spool directory (segments, the dead-letter store,
    /// the de-duplication journal) on `fs`: for tests that inject faults or slow disks.
    pub async fn bind_with_fs(settings: Settings, fs: Arc<dyn SpoolFs>) -> Result<App, Error> {
        let metrics = Arc::new(Metrics::for_endpoints(&settings.endpoints.names()));
        let c = &settings.raw;
        metrics.spool_max_bytes.set(c.spool.max_bytes as i64);
        let spool = open_spool(c, &metrics, fs.clone()).await?;
        let dead_letters = open_dead_letters(c, &metrics, fs.clone()).await?;
        let dedup = open_dedup(c, fs).await?;
        let ingress = bind_listener(c.http.listen).await?;
        let admin = bind_listener(c.admin.listen).await?;
        let broker = Arc::new(BrokerStatus::default());
        let sink = connect_sink(&settings, &metrics, &broker).await?;
        metrics.start_sink(sink.name(), broker.get() == crate::sink::BrokerState::Down);
        Ok(App {
            settings,
            ingress,
            admin,
            spool,
            sink,
            broker,
            dead_letters,
            dedup,
            metrics,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.ingress
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then stops in order (see the module doc) within
    /// `shutdown.grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let running = self.start();
        let spool_failed = tokio::select! {
            _ = shutdown => false,
            _ = drain_after_failure(running.spool.clone()) => true,
        };
        running.stop().await;
        if spool_failed {
            return Err(Error::SpoolFailed);
        }
        Ok(())
    }

    /// Spawns the forwarder, the ingress listener (and its certificate watch) and the admin
    /// listener.
    fn start(self) -> Running {
        let App {
            settings,
            ingress,
            admin,
            spool,
            sink,
            broker,
            dead_letters,
            dedup,
            metrics,
        } = self;
        let c = &settings.raw;
        let grace = c.shutdown.grace;
        announce(&settings, &ingress, &admin, sink.name());
        let (stop_tx, stop_rx) = watch::channel(false);

        let progress = Arc::new(forward::Progress::default());
        let forwarder = Forwarder {
            spool: spool.clone(),
            sink: sink.clone(),
            endpoints: settings.endpoints.clone(),
            cfg: c.forward.clone(),
            metrics: metrics.clone(),
            status: broker.clone(),
            dead_letters: dead_letters.clone(),
            progress: progress.clone(),
            clock: Clock::system(),
        };
        let (fwd_stop_tx, fwd_stop_rx) = watch::channel(false);
        let forward_task = tokio::spawn(forwarder.run(stopped(fwd_stop_rx), grace));

        let ingress_state = ingress_state(&settings, &spool, &dedup, &metrics);
        let tls_accept = settings.tls.as_ref().map(|tls| TlsAccept {
            acceptor: tls.acceptor(),
            handshake_timeout: tls.handshake_timeout(),
        });
        let tls_task = settings
            .tls
            .clone()
            .map(|tls| tokio::spawn(tls.watch(metrics.clone(), stopped(stop_rx.clone()))));
        let ingress_task = tokio::spawn(server::serve(
            ingress,
            move |peer: SocketAddr| IngressService(ingress_state.clone(), peer.ip()),
            ingress_limits(c, &metrics),
            tls_accept,
            stopped(stop_rx.clone()),
            grace,
        ));

        let (admin_stop_tx, admin_task) = spawn_admin(
            admin,
            Admin {
                spool: spool.clone(),
                metrics: metrics.clone(),
                broker,
                dead_letters: dead_letters.clone(),
                dedup: dedup.clone(),
                forward: progress,
                renders: Default::default(),
                render_wait: c.admin.write_timeout,
                api: admin_api(&settings, &spool, dead_letters, &metrics),
            },
            admin_limits(c, &metrics),
        );
        Running {
            grace,
            spool,
            dedup,
            stop_tx,
            ingress_task,
            tls_task,
            fwd_stop_tx,
            forward_task,
            admin_stop_tx,
            admin_task,
        }
    }
}

/// A started bridge: its tasks, and what stopping them in order needs.
struct Running {
    grace: std::time::Duration,
    spool: Spool,
    dedup: Option<Arc<Dedup>>,
    /// Stops the ingress listener and the certificate watch.
    stop_tx: watch::Sender<bool>,
    ingress_task: JoinHandle<()>,
    tls_task: Option<JoinHandle<()>>,
    fwd_stop_tx: watch::Sender<bool>,
    forward_task: JoinHandle<()>,
    admin_stop_tx: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
}

impl Running {
    /// The shutdown order of the module doc: ingress, forwarder (with what is left of the
    /// grace), de-duplication journal, spool, admin listener.
    async fn stop(self) {
        let began = tokio::time::Instant::now();
        let grace = self.grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections; finishing in-flight requests"
        );
        let _ = self.stop_tx.send(true);
        let _ = self.ingress_task.await;
        if let Some(t) = self.tls_task {
            let _ = t.await;
        }
        // The forwarder gets whatever grace the ingress left.
        let remaining = grace.saturating_sub(began.elapsed());
        tracing::info!(
            ?remaining,
            "ingress closed; letting in-flight publishes resolve"
        );
        let _ = self.fwd_stop_tx.send(true);
        if tokio::time::timeout(
            remaining + std::time::Duration::from_millis(200),
            self.forward_task,
        )
        .await
        .is_err()
        {
            tracing::warn!("forwarder did not stop in time");
        }
        if let Some(dedup) = self.dedup {
            // The ingress is closed: write the last journal records before the process exits.
            let _ = tokio::task::spawn_blocking(move || dedup.close()).await;
        }
        let spool = self.spool;
        if let Err(e) = spool.close().await {
            tracing::error!(error = %e, "closing the spool failed; the next start replays from the last persisted position");
        }
        let _ = self.admin_stop_tx.send(true);
        let _ = self.admin_task.await;
        let s = spool.stats();
        tracing::info!(backlog_records = s.records, confirmed = s.confirmed, took = ?began.elapsed(), "stopped");
    }
}

/// Serves the admin listener until the returned sender says stop; it then gets a second to
/// finish (it goes last, so the process stays observable while it drains).
fn spawn_admin(
    listener: TcpListener,
    admin: Admin,
    limits: Limits,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let admin = Arc::new(admin);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(server::serve(
        listener,
        move |peer| AdminService(admin.clone(), peer),
        limits,
        None,
        stopped(stop_rx),
        std::time::Duration::from_secs(1),
    ));
    (stop_tx, task)
}

/// The admin API on the running bridge's own spool writer and dead-letter store.
fn admin_api(
    settings: &Settings,
    spool: &Spool,
    dead_letters: Arc<DeadLetters>,
    metrics: &Arc<Metrics>,
) -> crate::admin::api::Api {
    let a = &settings.raw.admin;
    crate::admin::api::Api {
        spool: spool.clone(),
        spool_dir: settings.raw.spool.dir.clone(),
        dead_letters,
        metrics: metrics.clone(),
        token: settings.admin_token.clone(),
        max_page_size: a.max_page_size,
        max_request_bytes: a.max_request_bytes,
        max_replay_bytes: a.max_replay_bytes,
        read_timeout: a.idle_timeout,
        busy: Default::default(),
        job: Default::default(),
        next_job: Default::default(),
    }
}

/// The one line that says the bridge is up, and where.
fn announce(settings: &Settings, ingress: &TcpListener, admin: &TcpListener, sink: &str) {
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        listen = %addr(ingress),
        tls = settings.tls.is_some(),
        path = %settings.raw.http.path,
        endpoints = %settings.endpoints.iter().map(|e| format!("{}={}", e.name, e.path)).collect::<Vec<_>>().join(" "),
        admin = %addr(admin),
        sink,
        "hookbridge serving"
    );
}

/// Resolves when the watch channel says stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Resolves once the spool has failed and then drained its committed backlog (or
/// [`FAILED_DRAIN`] passed). A failed spool cannot take deliveries again without a restart
/// (recovery is what re-reads the disk), and a supervisor only restarts a process that exits.
async fn drain_after_failure(spool: Spool) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if spool.health() == crate::spool::Health::Failed {
            break;
        }
    }
    tracing::error!(
        "the spool failed; draining what it holds, then exiting so a supervisor restarts the bridge"
    );
    let deadline = tokio::time::Instant::now() + FAILED_DRAIN;
    while spool.stats().records > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn open_spool(
    c: &Config,
    metrics: &Arc<Metrics>,
    fs: Arc<dyn SpoolFs>,
) -> Result<Spool, Error> {
    let spool_cfg = spool_config(c);
    let dir = c.spool.dir.display().to_string();
    let m = metrics.clone();
    let started = Instant::now();
    let (spool, report) =
        tokio::task::spawn_blocking(move || Spool::open_with_fs(spool_cfg, m, fs))
            .await
            .expect("spool open does not panic")
            .map_err(|source| Error::Spool { dir, source })?;
    tracing::debug!(took = ?started.elapsed(), moved_aside = ?report.segments_moved_aside, "spool opened");
    Ok(spool)
}

async fn open_dead_letters(
    c: &Config,
    metrics: &Metrics,
    fs: Arc<dyn SpoolFs>,
) -> Result<Arc<DeadLetters>, Error> {
    let dir = c.spool.dir.clone();
    let dead_letters = Arc::new(
        tokio::task::spawn_blocking(move || DeadLetters::open_with_fs(&dir, fs))
            .await
            .expect("dead-letter open does not panic")?,
    );
    metrics.dead_letter_records.set(dead_letters.len() as i64);
    if !dead_letters.is_empty() {
        tracing::warn!(
            records = dead_letters.len(),
            dir = %dead_letters.dir().display(),
            "the dead-letter store holds records the broker refused; see `hookbridge spool dead-letter`"
        );
    }
    Ok(dead_letters)
}

/// `None` when de-duplication is off (`auth.dedup_window` 0).
async fn open_dedup(c: &Config, fs: Arc<dyn SpoolFs>) -> Result<Option<Arc<Dedup>>, Error> {
    if c.auth.dedup_window.is_zero() {
        return Ok(None);
    }
    let (dir, window, max) = (
        c.spool.dir.clone(),
        c.auth.dedup_window,
        c.auth.dedup_max_entries,
    );
    let clock = Clock::system();
    let d = tokio::task::spawn_blocking(move || Dedup::open(fs, &dir, window, max, clock))
        .await
        .expect("dedup open does not panic")
        .map_err(|e| Error::Dedup(e.to_string()))?;
    tracing::info!(remembered = d.len(), window = ?window, "delivery-id de-duplication ready");
    Ok(Some(Arc::new(d)))
}

async fn bind_listener(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The configured sink; an unreachable broker is not an error (the forwarder retries).
async fn connect_sink(
    settings: &Settings,
    metrics: &Metrics,
    broker: &Arc<BrokerStatus>,
) -> Result<Arc<dyn Sink>, Error> {
    let c = &settings.raw;
    Ok(match c.sink.kind {
        SinkKind::Nats => Arc::new(
            NatsSink::connect(&c.sink.nats, &settings.endpoints, broker.clone())
                .await
                .map_err(|e| Error::Sink(e.to_string()))?,
        ),
        SinkKind::Kafka => Arc::new(
            KafkaSink::new(
                &c.sink.kafka,
                broker.clone(),
                metrics.kafka_queue_messages.clone(),
            )
            .map_err(|e| Error::Sink(e.to_string()))?,
        ),
    })
}

fn ingress_state(
    settings: &Settings,
    spool: &Spool,
    dedup: &Option<Arc<Dedup>>,
    metrics: &Arc<Metrics>,
) -> Arc<Ingress> {
    let c = &settings.raw;
    metrics
        .http_max_buffered_bytes
        .set(c.http.max_buffered_bytes as i64);
    Arc::new(Ingress {
        max_body_bytes: c.http.max_body_bytes,
        request_timeout: c.http.request_timeout,
        retry_after: c.http.retry_after,
        endpoints: settings.endpoints.clone(),
        spool: spool.clone(),
        dedup: dedup.clone(),
        dedup_wait: c.auth.dedup_wait,
        metrics: metrics.clone(),
        budget: crate::ingress::budget::Budget::new(
            c.http.max_buffered_bytes,
            metrics.http_buffered_bytes.clone(),
        ),
        per_client: crate::ingress::budget::PerClient::new(c.http.max_bodies_per_client),
    })
}

fn ingress_limits(c: &Config, metrics: &Metrics) -> Limits {
    Limits {
        max_connections: c.http.max_connections,
        header_timeout: c.http.header_timeout,
        rejected_counter: Some(metrics.http_rejected_connections.clone()),
        open_gauge: Some(metrics.http_connections.clone()),
        max_headers: c.http.max_headers,
        max_header_bytes: c.http.max_header_bytes,
        error_counter: Some(metrics.http_connection_errors.clone()),
        linger_timeout: c.http.linger_timeout,
        linger_bytes: c.http.linger_bytes,
        linger_counter: Some(metrics.http_lingering_closes.clone()),
        write_timeout: c.http.write_timeout,
        reserve: None,
    }
}

fn admin_limits(c: &Config, metrics: &Metrics) -> Limits {
    Limits {
        max_connections: c.admin.max_connections,
        // hyper's head timer also runs while a keep-alive connection waits for its next
        // request: it is the idle timeout.
        header_timeout: c.admin.idle_timeout,
        rejected_counter: Some(
            metrics
                .admin_rejected_connections
                .with_label_values(&["limit"]),
        ),
        open_gauge: Some(metrics.admin_connections.clone()),
        max_headers: 64,
        // Also what hyper reads ahead of a pipelined request.
        max_header_bytes: 16 * 1024,
        error_counter: Some(metrics.admin_connection_errors.clone()),
        linger_timeout: c.http.linger_timeout,
        linger_bytes: c.http.linger_bytes,
        linger_counter: None,
        write_timeout: c.admin.write_timeout,
        // Invariant 10: the probes answer while stalled clients hold every other slot.
        reserve: Some(server::Reserve {
            connections: c.admin.probe_connections,
            paths: crate::admin::PROBE_PATHS,
            timeout: c.admin.probe_timeout,
            not_probe_counter: Some(
                metrics
                    .admin_rejected_connections
                    .with_label_values(&["not_probe"]),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Format;

    #[test]
    fn settings_errors_name_the_key() {
        for (toml, key) in [
            ("[routing]\nprefix = \"a b.\"\n", "routing.prefix"),
            (
                "[routing.routes]\n\"session.*\" = \"x.>\"\n",
                "routing.routes",
            ),
            ("[auth]\nsecrets = [\"nothex\"]\n", "auth.secrets"),
            ("[http]\npath = \"no-slash\"\n", "http.path"),
        ] {
            let c: Config = config::figment(None)
                .merge(figment::providers::Toml::string(toml))
                .extract()
                .unwrap();
            let err = Settings::new(c).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }
}
