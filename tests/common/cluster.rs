//! A three-server NATS cluster with JetStream on loopback (routes between the servers, each with
//! its own storage), whose servers a test can SIGKILL and restart on the same ports and storage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::{nats_server_command, takes_clients, BrokerPort, ChildServer};

struct Node {
    name: String,
    server: ChildServer,
    cluster_port: BrokerPort,
    store: PathBuf,
}

pub struct NatsCluster {
    cluster_name: String,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Picks ports (see [`super::broker_port`]) and storage directories under `dir` for `size`
    /// servers named `n0`, `n1`, …, and starts them all.
    pub async fn start(dir: &Path, size: usize) -> NatsCluster {
        let nodes: Vec<Node> = (0..size)
            .map(|i| Node {
                name: format!("n{i}"),
                server: ChildServer::new("nats-server"),
                cluster_port: BrokerPort::new(),
                store: dir.join(format!("n{i}")),
            })
            .collect();
        // Every server is told every route before any starts, so the ports are fixed from here.
        for n in &nodes {
            n.server.port();
            n.cluster_port.get();
        }
        let mut cluster = NatsCluster {
            cluster_name: super::unique("hbc"),
            nodes,
        };
        for i in 0..size {
            cluster.start_node(i).await;
        }
        cluster
    }

    /// Every server's client URL, comma-separated: the seed list for `sink.nats.url`.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].server.port())
    }

    /// The server name of node `i` (`n<i>`), as JetStream reports it as a stream leader.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].server.is_running()
    }

    /// Starts node `i` on its ports and storage and waits until it takes clients.
    async fn start_node(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port.port))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_name = self.cluster_name.clone();
        let n = &mut self.nodes[i];
        std::fs::create_dir_all(&n.store).unwrap();
        let (name, store, cluster_port) = (n.name.clone(), n.store.clone(), n.cluster_port.port);
        let command = |port: u16| {
            let mut c = nats_server_command(port, &store);
            c.args(["--server_name", &name])
                .args(["--cluster_name", &cluster_name])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{cluster_port}"))
                .args(["--routes", &routes])
                .arg("-l")
                .arg(store.join("server.log"));
            c
        };
        n.server
            .start(Duration::from_secs(15), command, takes_clients)
            .await;
    }

    /// SIGKILL node `i` (its storage stays).
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].server.stop();
    }

    /// Starts node `i` again on its ports and storage.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.is_running(i), "node {i} is running");
        self.start_node(i).await;
    }

    /// A JetStream context on the running servers. Its API requests time out after 500 ms, so
    /// polling during an election sees the new leader within about that.
    pub async fn jetstream(&self) -> jetstream::Context {
        let urls: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.url(i))
            .collect();
        let client = async_nats::ConnectOptions::new()
            .connect(urls)
            .await
            .expect("connect to the cluster");
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(500))
            .build(client)
    }

    /// The index of the server leading `stream`, waiting up to `timeout` for the stream to
    /// exist and have a leader other than `not`.
    pub async fn stream_leader(&self, stream: &str, timeout: Duration) -> usize {
        let js = self.jetstream().await;
        let leader = wait_stream_leader(&js, stream, None, timeout).await;
        self.index_of(&leader).expect("a member leads")
    }
}

/// The name of the server leading `stream` once it has one other than `not`; panics after
/// `timeout`.
pub async fn wait_stream_leader(
    js: &jetstream::Context,
    stream: &str,
    not: Option<&str>,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    if Some(leader.as_str()) != not {
                        return leader;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream} has no new leader after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
