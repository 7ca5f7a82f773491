//! Test tiers: which services and tools a test needs beyond Rust. Plain `cargo test` on a machine
//! without them passes and names, one line per test, what it did not run; `scripts/test` (CI)
//! sets `HOOKBRIDGE_TEST_REQUIRE_ALL=1`, and then a missing service fails the test instead.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child::find_bin;
use super::kafka::find_tansu;
use super::nats::{nats_url, NATS_SERVER_PATHS};

/// What a test needs besides Rust and a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// NATS with JetStream at [`nats_url`] (`HOOKBRIDGE_TEST_NATS_URL`).
    Nats,
    /// A `nats-server` binary, for private servers and clusters the test stops and restarts.
    NatsServer,
    /// tansu, the Kafka-protocol broker the Kafka tests start.
    Kafka,
    /// `python3` with the independent clients: kafka-python, lz4, svix, requests, cloudevents,
    /// jsonschema, nats-py.
    Python,
    /// `node` and the AsyncAPI parser in `tests/asyncapi/node_modules`.
    AsyncApiParser,
    /// `haproxy`.
    Haproxy,
    /// libfaketime (Debian's `faketime`).
    Faketime,
    /// Debian's `chromium` (`CHROMIUM_BIN`) and `playwright-core` in `tests/ui/node_modules`.
    Browser,
}

impl Tier {
    /// Why this tier cannot run here, or `None` if it can.
    fn missing(self) -> Option<String> {
        let ok = match self {
            Tier::Nats => nats_reachable(&nats_url()),
            Tier::NatsServer => find_bin("nats-server", "NATS_SERVER_BIN", NATS_SERVER_PATHS)
                .is_some_and(|p| p.exists()),
            Tier::Kafka => find_tansu().is_some_and(|p| p.exists()),
            Tier::Python => succeeds(
                "python3",
                &[
                    "-c",
                    "import kafka, lz4, svix, requests, cloudevents, jsonschema, nats",
                ],
            ),
            Tier::AsyncApiParser => {
                succeeds("node", &["--version"])
                    && Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/asyncapi/node_modules/@asyncapi/parser")
                        .is_dir()
            }
            Tier::Haproxy => find_bin("haproxy", "HAPROXY_BIN", &["/usr/sbin/haproxy"])
                .is_some_and(|p| p.exists()),
            Tier::Faketime => faketime_lib().is_some(),
            Tier::Browser => {
                chromium_bin().exists()
                    && succeeds("node", &["--version"])
                    && Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/ui/node_modules/playwright-core")
                        .is_dir()
            }
        };
        if ok {
            return None;
        }
        Some(match self {
            Tier::Nats => format!(
                "NATS with JetStream at {} (HOOKBRIDGE_TEST_NATS_URL)",
                nats_url()
            ),
            Tier::NatsServer => "nats-server (NATS_SERVER_BIN)".into(),
            Tier::Kafka => "tansu, the Kafka-protocol broker (TANSU_BIN)".into(),
            Tier::Python => "python3 with kafka-python, lz4, svix, requests, cloudevents, \
                             jsonschema and nats-py"
                .into(),
            Tier::AsyncApiParser => {
                "node and the AsyncAPI parser (npm ci in tests/asyncapi)".into()
            }
            Tier::Haproxy => "haproxy (HAPROXY_BIN)".into(),
            Tier::Faketime => "libfaketime (Debian's faketime)".into(),
            Tier::Browser => {
                "chromium (CHROMIUM_BIN) and playwright-core (npm ci in tests/ui)".into()
            }
        })
    }
}

/// Whether this test can run: true if every tier in `tiers` is available. Otherwise, with
/// `HOOKBRIDGE_TEST_REQUIRE_ALL=1` the test fails here; without it, it prints one line naming
/// the test and what it needs (past the test harness's output capture, so plain `cargo test`
/// shows it) and returns false, and the test returns without checking anything.
pub fn require(tiers: &[Tier]) -> bool {
    let missing: Vec<String> = tiers.iter().filter_map(|t| t.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let needs = missing.join(", ");
    if std::env::var("HOOKBRIDGE_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test} needs {needs}, and HOOKBRIDGE_TEST_REQUIRE_ALL=1: run scripts/test, which installs and starts what the tests need");
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs {needs}; run scripts/test"
    );
    false
}

/// The headless browser of the page test: `CHROMIUM_BIN`, else Debian's `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("CHROMIUM_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// libfaketime's preloadable library, if installed.
pub fn faketime_lib() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Whether something accepts TCP connections at the first address of the NATS URL list `urls`.
fn nats_reachable(urls: &str) -> bool {
    let first = urls.split(',').next().unwrap_or_default().trim();
    let hostport = first.split_once("://").map_or(first, |(_, rest)| rest);
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, hp)| hp);
    let Ok(addrs) = hostport.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
