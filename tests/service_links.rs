//! The real binary starts and serves with the environment Kubernetes gives a pod.
//!
//! The kubelet adds service-link variables for every Service in the pod's namespace (unless the
//! pod sets `enableServiceLinks: false`); a Service named `hookbridge` yields
//! `HOOKBRIDGE_PORT=tcp://…`, `HOOKBRIDGE_SERVICE_HOST` and more, all under the bridge's own
//! configuration prefix. They once made the configuration loader refuse to start (issue 30): only
//! `HOOKBRIDGE_<SECTION>__<KEY>` variables are configuration keys.

mod common;

use common::*;

const PATH: &str = "/webhooks/sessionboard";

/// The variables the kubelet writes for a Service `name` with cluster IP `ip` and `ports`
/// (name, port), first port first: Kubernetes' own `_SERVICE_*` variables and the Docker-links
/// style `_PORT*` ones (`pkg/kubelet/envvars`). The name is upper-cased with `-` as `_`.
fn service_links(name: &str, ip: &str, ports: &[(&str, u16)]) -> Vec<(String, String)> {
    let n = name.to_uppercase().replace('-', "_");
    let (_, first) = ports[0];
    let mut env = vec![
        (format!("{n}_SERVICE_HOST"), ip.to_owned()),
        (format!("{n}_SERVICE_PORT"), first.to_string()),
        (format!("{n}_PORT"), format!("tcp://{ip}:{first}")),
    ];
    for (port_name, port) in ports {
        let p = format!("{n}_PORT_{port}_TCP");
        env.extend([
            (
                format!("{n}_SERVICE_PORT_{}", port_name.to_uppercase()),
                port.to_string(),
            ),
            (p.clone(), format!("tcp://{ip}:{port}")),
            (format!("{p}_PROTO"), "tcp".to_owned()),
            (format!("{p}_PORT"), port.to_string()),
            (format!("{p}_ADDR"), ip.to_owned()),
        ]);
    }
    env
}

#[tokio::test]
async fn the_binary_serves_with_kubernetes_service_link_variables() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("svclinks");
    let stream = prefix.to_uppercase();
    // The file the pod names with HOOKBRIDGE_CONFIG, so that variable is exercised too.
    let config = dir.path().join("hookbridge.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\n").unwrap();

    let mut env = bridge_env(&dir.path().join("spool"), &prefix, &stream);
    env.push(("HOOKBRIDGE_CONFIG".into(), config.display().to_string()));
    let ports = [("http", 8080), ("admin", 9090)];
    let links: Vec<_> = service_links("hookbridge", "10.96.0.12", &ports)
        .into_iter()
        // The kubelet skips headless Services; a ClusterIP Service of this name would add these,
        // and `HOOKBRIDGE_HEADLESS_…` has no `__` either.
        .chain(service_links("hookbridge-headless", "10.96.0.13", &ports))
        .collect();
    for name in [
        "HOOKBRIDGE_PORT",
        "HOOKBRIDGE_SERVICE_HOST",
        "HOOKBRIDGE_SERVICE_PORT",
        "HOOKBRIDGE_SERVICE_PORT_HTTP",
        "HOOKBRIDGE_PORT_8080_TCP",
        "HOOKBRIDGE_PORT_8080_TCP_PROTO",
        "HOOKBRIDGE_PORT_8080_TCP_PORT",
        "HOOKBRIDGE_PORT_8080_TCP_ADDR",
        "HOOKBRIDGE_HEADLESS_PORT_9090_TCP_ADDR",
    ] {
        assert!(links.iter().any(|(k, _)| k == name), "{name} not generated");
    }
    env.extend(links);

    // Panics unless the process logs `hookbridge serving` and answers /livez.
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let (ready, _, _) = request(&client, "GET", &bridge.admin_url("/readyz"), &[], "")
        .await
        .unwrap();
    assert_eq!(ready, 200, "/readyz");
    let status = post(
        &client,
        &bridge.url(PATH),
        "msg_svclinks_1",
        body("session.updated", "s1", 1),
    )
    .await;
    assert_eq!(status, 200, "delivery");

    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 1, std::time::Duration::from_secs(20)).await;
    delete_stream(&js, &stream).await;
    assert_eq!(got.len(), 1, "the delivery reaches the stream");
    assert_eq!(got[0].subject, format!("{prefix}.session.updated"));
}
