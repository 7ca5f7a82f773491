"""Structural checks of deploy/ that no schema covers; run by deploy/check-deploy-files.sh.

    check_deploy_files.py kustomization K8S_DIR  the base, the example overlay and the drain
                                                 component list every manifest in their directory
    check_deploy_files.py prometheusrule [--write]
                                                 base/prometheusrule.yaml holds exactly the groups of
                                                 deploy/prometheus/alerts.yml (--write regenerates it)
    check_deploy_files.py alerts                 every alert has a runbook_url whose anchor is in
                                                 docs/operations.md
    check_deploy_files.py kubernetes BASE RENDERED
                                                 what the base leaves out (Secret), cross-references
                                                 inside the rendered overlay (with the drain
                                                 component), the ServiceMonitor against a schema of
                                                 our own, the NetworkPolicy, resources, scheduling,
                                                 and the drain pod against the StatefulSet
    check_deploy_files.py podenv RENDERED POD DIR
                                                 the pod's files and environment as the kubelet makes
                                                 them (POD: statefulset or drain): the ConfigMap and
                                                 Secret volumes written under DIR/root, the container's
                                                 environment (image ENV, env, service links for every
                                                 Service in the namespace unless enableServiceLinks is
                                                 false) in DIR/env (NUL-separated), the container's
                                                 memory limit in DIR/memory-limit, the same environment with the service links even
                                                 where the pod turns them off in DIR/env-with-links, the Secret's
                                                 placeholders in DIR/placeholders/N (the file each
                                                 stands in for on line N of DIR/placeholders/files); mount paths are
                                                 mapped under DIR/root, in values and config files
    check_deploy_files.py config RENDERED EFFECTIVE_TOML
                                                 the configuration `hookbridge check-config` printed
                                                 agrees with the StatefulSet (ports, paths, grace,
                                                 each endpoint's secret file a key of the Secret)
    check_deploy_files.py dashboard DASHBOARD RULES_OUT
                                                 the dashboard's structure; writes every query as a
                                                 recording rule so promtool can parse the PromQL

Needs PyYAML and jsonschema (both come with kubernetes-validate). Exits 1 with one line per problem.
"""

import json
import os
import re
import sys
import tomllib

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ALERTS = os.path.join(HERE, "prometheus", "alerts.yml")
PROMETHEUS_RULE = os.path.join(HERE, "kubernetes", "base", "prometheusrule.yaml")
RUNBOOKS = os.path.join(HERE, "..", "docs", "operations.md")
problems = []


def fail(msg):
    problems.append(msg)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(kinds, kind, name=None):
    found = [d for d in kinds.get(kind, []) if name is None or d["metadata"]["name"] == name]
    if len(found) != 1:
        fail(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return {}
    return found[0]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text):
    """humantime durations as hookbridge prints them: "20s", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    if not parts or re.sub(r"\d+\s*(ms|s|m|h)|\s", "", text):
        raise ValueError(f"cannot read duration {text!r}")
    for n, u in parts:
        total += int(n) * units[u]
    return total


# --- kustomization ----------------------------------------------------------------------------

def check_kustomization(k8s):
    """Every manifest in base/, overlays/*/ and components/*/ is listed in its kustomization
    (resources, or a generator's files), and every listed file exists."""
    dirs = [os.path.join(k8s, "base")]
    for group in ("overlays", "components"):
        root = os.path.join(k8s, group)
        dirs += [os.path.join(root, d) for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]
    for d in dirs:
        rel = os.path.relpath(d, os.path.dirname(k8s))
        k = load_all(os.path.join(d, "kustomization.yaml"))[0]
        listed = [r for r in k.get("resources", []) if not r.startswith("../")]
        generated = [f.split("=")[-1] for g in k.get("configMapGenerator", []) + k.get("secretGenerator", [])
                     for f in g.get("files", [])]
        files = sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)) and f != "kustomization.yaml")
        for f in files:
            if f not in listed and f not in generated:
                fail(f"{rel}/{f} is not listed in its kustomization.yaml (resources or a generator's files)")
        for f in listed + generated:
            if f not in files:
                fail(f"{rel}/kustomization.yaml lists {f}, which is not a file there")
        if len(set(listed)) != len(listed):
            fail(f"{rel}/kustomization.yaml lists a resource twice")
        for f in listed:
            for doc in load_all(os.path.join(d, f)):
                for key in ("apiVersion", "kind", "metadata"):
                    if key not in doc:
                        fail(f"{rel}/{f}: a document without {key}")


# --- PrometheusRule: the alert rules, for the Prometheus Operator -------------------------------

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `deploy/check_deploy_files.py prometheusrule
# --write`; edit alerts.yml (its unit tests are there) and regenerate. The deploy check fails
# when the two differ. Needs the monitoring.coreos.com CRDs; a Prometheus picks it up only if
# its ruleSelector matches this resource's labels (the kube-prometheus-stack chart selects
# `release: <Helm release name>`: overlays/example adds that label; docs/operations.md, "Monitor").
"""


def prometheus_rule_text():
    with open(ALERTS) as f:
        groups = yaml.safe_load(f)["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "hookbridge", "labels": {"app.kubernetes.io/name": "hookbridge"}},
        "spec": {"groups": groups},
    }
    return PROMETHEUS_RULE_HEADER + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


def check_prometheus_rule(write):
    text = prometheus_rule_text()
    if write:
        with open(PROMETHEUS_RULE, "w") as f:
            f.write(text)
        return
    try:
        with open(PROMETHEUS_RULE) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current != text:
        fail("deploy/kubernetes/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
             "run `deploy/check_deploy_files.py prometheusrule --write`")


def runbook_anchors():
    with open(RUNBOOKS) as f:
        text = f.read()
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        a = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(a)
    return anchors


def check_alerts():
    with open(ALERTS) as f:
        rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
    anchors = runbook_anchors()
    for r in rules:
        if "alert" not in r:
            continue
        url = r.get("annotations", {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        if not url.startswith("https://") or not url.partition("#")[0].endswith("/docs/operations.md") \
                or anchor not in anchors:
            fail(f"{r['alert']}: runbook_url {url!r} does not point at an anchor of docs/operations.md")
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(f"{r['alert']}: severity must be critical, warning or info")
        if r["alert"] == "HookbridgeSpoolRejecting" and not r.get("for"):
            fail("HookbridgeSpoolRejecting needs a `for:`")
        for agg in re.findall(r"by \(([^)]*)\)", r["expr"]):
            labels = [x.strip() for x in agg.split(",")]
            if not {"namespace", "job", "pod", "instance"} <= set(labels):
                fail(f"{r['alert']}: aggregates by ({agg}); keep namespace, job, pod and instance")


# --- ServiceMonitor schema (the prometheus-operator CRD is in no registry package) ---------------

DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": LABELS, "annotations": LABELS},
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {"matchLabels": LABELS},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


# --- the rendered manifests -------------------------------------------------------------------

def pod_of(kinds, which):
    """(pod metadata, pod spec) of the StatefulSet's template or of the drain pod."""
    if which == "statefulset":
        sts = one(kinds, "StatefulSet", "hookbridge")
        return (sts["spec"]["template"]["metadata"], sts["spec"]["template"]["spec"]) if sts else (None, None)
    pod = one(kinds, "Pod", "hookbridge-drain")
    return (pod["metadata"], pod["spec"]) if pod else (None, None)


def volume_source(pod, kind, name_key, base_name):
    """The name a pod volume of `kind` (configMap/secret) gives for `base_name` (with or without
    a generated hash suffix)."""
    for v in pod.get("volumes", []):
        name = v.get(kind, {}).get(name_key, "")
        if name == base_name or name.startswith(base_name + "-"):
            return v["name"], name
    return None, None


def check_base(base_rendered):
    """What the base must leave out: anything an overlay owns."""
    kinds = by_kind(load_all(base_rendered))
    for secret in kinds.get("Secret", []):
        fail(f"the base ships Secret {secret['metadata']['name']}: every `apply -k` or GitOps sync "
             "would write it over the real one; an overlay or a secrets operator provides it")
    for kind, docs in kinds.items():
        for d in docs:
            if d["metadata"].get("namespace"):
                fail(f"the base sets a namespace on {kind} {d['metadata']['name']}; that is the overlay's choice")


def check_kubernetes(rendered):
    kinds = by_kind(load_all(rendered))
    sts = one(kinds, "StatefulSet", "hookbridge")
    if not sts:
        return
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if not matches(spec["selector"]["matchLabels"], pod_labels):
        fail("StatefulSet selector does not match its pod template labels")
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    # Item 1: no service-link variables under the bridge's configuration prefix.
    if pod.get("enableServiceLinks") is not False:
        fail("StatefulSet: set enableServiceLinks: false (service links put HOOKBRIDGE_PORT, "
             "HOOKBRIDGE_SERVICE_HOST, … into the bridge's configuration prefix)")

    # One claim per replica for the spool, never a shared volume; kept on scale-down and delete.
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    if claims != ["spool"]:
        fail(f"volumeClaimTemplates should be exactly ['spool'], is {claims}")
    shared = [v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
    if shared:
        fail(f"pod volumes {shared} name a PersistentVolumeClaim shared by every replica")
    if spec.get("persistentVolumeClaimRetentionPolicy") != {"whenDeleted": "Retain", "whenScaled": "Retain"}:
        fail("persistentVolumeClaimRetentionPolicy must be Retain for whenDeleted and whenScaled")
    if not any(m["name"] == "spool" for m in c["volumeMounts"]):
        fail("the spool claim is not mounted")

    # Item 5: the configuration rolls the pods when it changes.
    _, cm_name = volume_source(pod, "configMap", "name", "hookbridge-config")
    if cm_name is None:
        fail("the StatefulSet mounts no ConfigMap hookbridge-config")
    elif cm_name == "hookbridge-config":
        fail("ConfigMap hookbridge-config has no content hash in its name (use a configMapGenerator): "
             "a changed configuration would not roll the pods")
    elif not any(d["metadata"]["name"] == cm_name for d in kinds.get("ConfigMap", [])):
        fail(f"the StatefulSet mounts ConfigMap {cm_name}, which is not rendered")
    # Item 2: the Secret comes from the overlay (or a secrets operator) under the mounted name.
    _, secret_name = volume_source(pod, "secret", "secretName", "hookbridge-signing-secrets")
    if secret_name is None:
        fail("the StatefulSet mounts no Secret hookbridge-signing-secrets")

    # Services: the headless one governs the StatefulSet; all select the pods and name real
    # ports. Item 4: the admin port is on no Service with a cluster IP.
    headless = one(kinds, "Service", spec["serviceName"])
    if headless and headless["spec"].get("clusterIP") != "None":
        fail(f"Service {spec['serviceName']} (serviceName) is not headless")
    services = kinds.get("Service", [])
    if len(services) != 2:
        fail(f"expected a headless and a regular Service, found {len(services)}")
    for svc in services:
        name = svc["metadata"]["name"]
        if not matches(svc["spec"]["selector"], pod_labels):
            fail(f"Service {name} does not select the hookbridge pods")
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ports:
                fail(f"Service {name} port {p['name']} targets {p['targetPort']}, not a container port")
            elif p["port"] != ports[p["targetPort"]]:
                fail(f"Service {name} port {p['name']} is {p['port']}, the container's is {ports[p['targetPort']]}")
            if p["targetPort"] == "admin" and svc["spec"].get("clusterIP") != "None":
                fail(f"Service {name} exposes the admin port cluster-wide; only the headless Service "
                     "(for the ServiceMonitor) may name it")
    if ports != {"ingress": 8080, "admin": 9090}:
        fail(f"container ports should be ingress 8080 and admin 9090, are {ports}")

    check_network_policy(kinds, pod_labels, ports)

    # Item 9: scheduling.
    pdb = one(kinds, "PodDisruptionBudget", "hookbridge")
    if pdb and not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
        fail("PodDisruptionBudget does not select the hookbridge pods")
    if pdb and pdb["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
        fail("PodDisruptionBudget: set unhealthyPodEvictionPolicy: AlwaysAllow (a crash-looping "
             "replica must not block node drains)")
    zone = [t for t in pod.get("topologySpreadConstraints", [])
            if t.get("topologyKey") == "topology.kubernetes.io/zone"
            and matches(t.get("labelSelector", {}).get("matchLabels", {}), pod_labels)]
    if not zone:
        fail("StatefulSet: no topologySpreadConstraint over topology.kubernetes.io/zone selecting its pods")

    # Probes on the admin port.
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "admin":
            fail(f"{probe} should be httpGet {path} on port admin, is {get}")

    # Security context.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    want_pod = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"}}
    for k, v in want_pod.items():
        if psc.get(k) != v:
            fail(f"pod securityContext.{k} should be {v}, is {psc.get(k)}")
    want_c = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "capabilities": {"drop": ["ALL"]}}
    for k, v in want_c.items():
        if csc.get(k) != v:
            fail(f"container securityContext.{k} should be {v}, is {csc.get(k)}")
    # Item 9: the overlay names the registry (`images:`), the base never does.
    image = c.get("image", "")
    if "/" not in image.split(":")[0]:
        fail(f"image is {image}: the overlay should set the registry with an `images:` entry for hookbridge")
    check_resources("StatefulSet", c)

    # ServiceMonitor: our schema, then its selector and port against the Services.
    sm = one(kinds, "ServiceMonitor", "hookbridge")
    if sm:
        for err in jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(sm):
            fail(f"ServiceMonitor: {'.'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}")
        selected = [s for s in services if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if len(selected) != 1:
            fail(f"ServiceMonitor selects {len(selected)} Services; it must select exactly one "
                 "(selecting two would scrape every pod twice)")
        for svc in selected:
            names = {p["name"] for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    fail(f"ServiceMonitor endpoint port {ep.get('port')} is not a port of Service {svc['metadata']['name']}")
                elif ep["port"] != "admin":
                    fail("ServiceMonitor must scrape the admin port")
            job = svc["metadata"].get("labels", {}).get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])
            if job != "hookbridge":
                fail(f"the ServiceMonitor's job label would be {job}; the alert rules expect hookbridge")
    if not kinds.get("PrometheusRule"):
        fail("no PrometheusRule: the alert rules do not reach a Prometheus Operator")

    check_drain_pod(kinds, sts)


def check_resources(what, container):
    """Item 3: the spool pod's memory is reserved (request = limit); the limit against the
    configuration is checked by `hookbridge check-config --memory-limit`."""
    res = container.get("resources", {})
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(k, {}):
                fail(f"{what}: resources.{k}.{r} is missing")
    mem = (res.get("requests", {}).get("memory"), res.get("limits", {}).get("memory"))
    if mem[0] != mem[1]:
        fail(f"{what}: memory request {mem[0]} and limit {mem[1]} differ; the spool pod reserves "
             "what its configuration may use (request = limit, sized from the memory formula)")


def check_network_policy(kinds, pod_labels, ports):
    """Item 4: the ingress port only from the ingress controller's namespace, the admin port
    only from the monitoring namespace, nothing else."""
    policies = [p for p in kinds.get("NetworkPolicy", [])
                if matches(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels)]
    if len(policies) != 1:
        fail(f"expected one NetworkPolicy selecting the hookbridge pods, found {len(policies)}")
        return
    spec = policies[0]["spec"]
    if "Ingress" not in spec.get("policyTypes", []):
        fail("NetworkPolicy: policyTypes must include Ingress")
    sources = {}
    for rule in spec.get("ingress", []):
        if not rule.get("ports") or not rule.get("from"):
            fail("NetworkPolicy: an ingress rule without ports or without `from` admits everything")
            continue
        for peer in rule["from"]:
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            if not ns or set(peer) != {"namespaceSelector"}:
                fail(f"NetworkPolicy: peer {peer} is not one namespace by kubernetes.io/metadata.name")
                continue
            for p in rule["ports"]:
                name = p.get("port")
                name = next((n for n, v in ports.items() if v == name), name)
                sources.setdefault(name, set()).add(ns)
    if set(sources) != {"ingress", "admin"}:
        fail(f"NetworkPolicy admits ports {sorted(sources)}; it should admit exactly ingress and admin")
    for port, namespaces in sources.items():
        if len(namespaces) != 1:
            fail(f"NetworkPolicy admits port {port} from {sorted(namespaces)}; one namespace each")
    if sources.get("ingress") and sources.get("ingress") == sources.get("admin"):
        fail("NetworkPolicy admits the admin port from the ingress controller's namespace")


def check_drain_pod(kinds, sts):
    """The drain pod mounts a claim the StatefulSet made, the way the StatefulSet mounts it, and
    no Service sends it traffic."""
    pods = [p for p in kinds.get("Pod", []) if p["metadata"]["name"] == "hookbridge-drain"]
    if len(pods) != 1:
        fail(f"expected the drain pod hookbridge-drain in the rendered overlay + component, found {len(pods)}")
        return
    pod = pods[0]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    (d,) = pod["spec"]["containers"]
    if pod["spec"].get("enableServiceLinks") is not False:
        fail("drain pod: set enableServiceLinks: false, as in the StatefulSet")
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v)
    if not re.fullmatch(rf"spool-{sts['metadata']['name']}-[0-9]+", claim):
        fail(f"drain pod claim {claim} is not a claim of the StatefulSet (spool-{sts['metadata']['name']}-N)")
    sts_volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    for m in c["volumeMounts"]:
        same = [x for x in d["volumeMounts"] if x["mountPath"] == m["mountPath"]]
        if not same:
            fail(f"drain pod does not mount {m['mountPath']} as the StatefulSet does")
        elif m["name"] in sts_volumes:
            dv = next(v for v in pod["spec"]["volumes"] if v["name"] == same[0]["name"])
            if {k: v for k, v in dv.items() if k != "name"} != {k: v for k, v in sts_volumes[m["name"]].items() if k != "name"}:
                fail(f"drain pod volume for {m['mountPath']} differs from the StatefulSet's")
    if d["image"] != c["image"] or d.get("env", [])[:1] != c.get("env", [])[:1]:
        fail("drain pod runs another image or configuration than the StatefulSet")
    if pod["spec"]["securityContext"] != sts["spec"]["template"]["spec"]["securityContext"]:
        fail("drain pod securityContext differs from the StatefulSet's")
    if d["securityContext"] != c["securityContext"]:
        fail("drain pod container securityContext differs from the StatefulSet's")
    check_resources("drain pod", d)
    for svc in kinds.get("Service", []):
        if matches(svc["spec"]["selector"], pod["metadata"]["labels"]):
            fail(f"Service {svc['metadata']['name']} would send deliveries to the drain pod")


# --- the pod as the kubelet starts it -----------------------------------------------------------

def image_env():
    """ENV lines of deploy/Containerfile's last stage (the runtime image)."""
    env = {}
    with open(os.path.join(HERE, "Containerfile")) as f:
        for line in f:
            m = re.match(r"ENV\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line)
            if m:
                env[m.group(1)] = m.group(2)
    return env


def service_links(kinds, namespace):
    """The variables the kubelet adds for every Service with a cluster IP in the pod's namespace
    (pkg/kubelet/envvars: headless Services are skipped), with made-up cluster IPs. The
    `kubernetes` Service's variables are always added and are left out here (no HOOKBRIDGE_ name)."""
    env = {}
    for n, svc in enumerate(kinds.get("Service", [])):
        if svc["metadata"].get("namespace", "default") != namespace:
            continue
        ip = svc["spec"].get("clusterIP") or f"10.96.0.{10 + n}"
        if ip == "None":
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ports = svc["spec"]["ports"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{name}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{ip}:{ports[0]['port']}"
        for p in ports:
            proto = p.get("protocol", "TCP")
            if p.get("name"):
                env[f"{name}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
            base = f"{name}_PORT_{p['port']}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{p['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(p["port"])
            env[f"{base}_ADDR"] = ip
    return env


def secret_files(secret):
    import base64
    out = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    out.update(secret.get("stringData", {}))
    return out


def podenv(rendered, which, out_dir):
    """Writes the pod's mounted files under out_dir/root and its environment to out_dir/env."""
    import base64
    import secrets
    kinds = by_kind(load_all(rendered))
    meta, pod = pod_of(kinds, which)
    if pod is None:
        return
    (c,) = pod["containers"]
    namespace = meta.get("namespace") or next(
        (d["metadata"].get("namespace") for d in kinds.get("StatefulSet", [])), None) or "default"
    root = os.path.join(out_dir, "root")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}

    def mapped(text):
        for path in sorted(mounts.values(), key=len, reverse=True):
            text = text.replace(path, root + path)
        return text

    by_name = lambda kind, name: next((d for d in kinds.get(kind, []) if d["metadata"]["name"] == name), None)
    placeholders = {}
    for v in pod.get("volumes", []):
        if v["name"] not in mounts:
            continue
        target = root + mounts[v["name"]]
        os.makedirs(target, exist_ok=True)
        if "configMap" in v:
            cm = by_name("ConfigMap", v["configMap"]["name"])
            if cm is None:
                fail(f"{which}: ConfigMap {v['configMap']['name']} is not rendered: the pod would not start")
                continue
            for key, text in cm.get("data", {}).items():
                with open(os.path.join(target, key), "w") as f:
                    f.write(mapped(text))
        elif "secret" in v:
            secret = by_name("Secret", v["secret"]["secretName"])
            if secret is None:
                fail(f"{which}: Secret {v['secret']['secretName']} is not rendered: the pod would not start")
                continue
            for key, text in secret_files(secret).items():
                # The example's placeholders are kept aside (each must be refused); the check
                # runs with a generated secret in each one's place.
                placeholders[os.path.join(target, key)] = text
                with open(os.path.join(target, key), "w") as f:
                    f.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    # One directory entry per secret file: placeholders/<n> holds the placeholder, and the
    # line n of placeholders/files the mounted file it stands in for.
    os.makedirs(os.path.join(out_dir, "placeholders"), exist_ok=True)
    with open(os.path.join(out_dir, "placeholders", "files"), "w") as listing:
        for n, (path, text) in enumerate(sorted(placeholders.items())):
            listing.write(path + "\n")
            with open(os.path.join(out_dir, "placeholders", str(n)), "w") as f:
                f.write(text)

    # The kubelet's order: the image's ENV, service links, then the container's own env (which
    # wins over both).
    links = service_links(kinds, namespace)

    def environment(with_links):
        env = dict(image_env())
        if with_links:
            env.update(links)
        env.update(container_env)
        return env

    container_env = {}
    for e in c.get("env", []):
        if "value" in e:
            container_env[e["name"]] = mapped(e["value"])
        elif "valueFrom" in e:
            ref = e["valueFrom"]
            if "configMapKeyRef" in ref:
                cm = by_name("ConfigMap", ref["configMapKeyRef"]["name"]) or {}
                container_env[e["name"]] = cm.get("data", {}).get(ref["configMapKeyRef"]["key"], "")
            elif "secretKeyRef" in ref:
                secret = by_name("Secret", ref["secretKeyRef"]["name"]) or {}
                container_env[e["name"]] = secret_files(secret).get(ref["secretKeyRef"]["key"], "")
            elif "fieldRef" in ref:
                field = ref["fieldRef"]["fieldPath"]
                container_env[e["name"]] = {"metadata.name": meta["name"] + ("-0" if which == "statefulset" else ""),
                                  "metadata.namespace": namespace}.get(field, "")
    env = environment(pod.get("enableServiceLinks", True))
    for name, variables in (("env", env), ("env-with-links", environment(True))):
        with open(os.path.join(out_dir, name), "w") as f:
            for k, v in variables.items():
                f.write(f"{k}={v}\0")
    with open(os.path.join(out_dir, "memory-limit"), "w") as f:
        f.write(str(c.get("resources", {}).get("limits", {}).get("memory", "")))
    shown = sorted(k for k in env if k.startswith("HOOKBRIDGE_") and "__" not in k and k != "HOOKBRIDGE_CONFIG")
    print(f"podenv {which}: {len(env)} variables"
          + (f", service links under the bridge's prefix: {' '.join(shown)}" if shown else ", no service links under HOOKBRIDGE_"))


def check_config(rendered, effective_path):
    """The configuration as hookbridge itself read it, against the pod that runs it."""
    kinds = by_kind(load_all(rendered))
    sts = one(kinds, "StatefulSet", "hookbridge")
    if not sts:
        return
    with open(effective_path, "rb") as f:
        eff = tomllib.load(f)
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    _, cm_name = volume_source(pod, "configMap", "name", "hookbridge-config")
    _, secret_name = volume_source(pod, "secret", "secretName", "hookbridge-signing-secrets")
    cm = next((d for d in kinds.get("ConfigMap", []) if d["metadata"]["name"] == cm_name), None)
    secret = next((d for d in kinds.get("Secret", []) if d["metadata"]["name"] == secret_name), None)
    if not (cm and secret):
        fail("the StatefulSet's ConfigMap or Secret is not rendered")
        return
    written = tomllib.loads(cm["data"]["hookbridge.toml"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    for key, port in (("http", "ingress"), ("admin", "admin")):
        listen = eff[key]["listen"]
        if listen != f"0.0.0.0:{ports[port]}":
            fail(f"{key}.listen is {listen}; the pod needs 0.0.0.0:{ports[port]} (container port {port})")

    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    cm_vol = next((n for n, v in volumes.items() if v.get("configMap", {}).get("name") == cm_name), None)
    if env.get("HOOKBRIDGE_CONFIG") != f"{mounts.get(cm_vol)}/hookbridge.toml":
        fail(f"HOOKBRIDGE_CONFIG is {env.get('HOOKBRIDGE_CONFIG')}, the ConfigMap is mounted at {mounts.get(cm_vol)}")

    spool_mount = mounts.get("spool", "")
    spool_dir = written.get("spool", {}).get("dir", "")
    if not (spool_dir == spool_mount or spool_dir.startswith(spool_mount.rstrip("/") + "/")):
        fail(f"spool.dir {spool_dir} is not on the spool claim (mounted at {spool_mount})")

    # Every key of the Secret is some endpoint's secret file, and no two endpoints share one (a
    # secret opens its own endpoint only).
    sec_vol = next((n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == secret_name), None)
    mounted = sorted(f"{mounts.get(sec_vol)}/{k}" for k in secret_files(secret))
    named = {"auth.secret_files": written.get("auth", {}).get("secret_files", [])}
    for i, e in enumerate(written.get("endpoints", [])):
        named[f"endpoints[{i}].auth.secret_files"] = e.get("auth", {}).get("secret_files", [])
    used = sorted(f for files in named.values() for f in files)
    if used != mounted:
        fail(f"the endpoints' secret files are {named}; the Secret is mounted as {mounted}")
    if any(not files for files in named.values()):
        fail(f"an endpoint without a secret file: {named}")

    # Grace: the kubelet must not SIGKILL a bridge that is still within shutdown.grace.
    if "grace" not in written.get("shutdown", {}):
        fail("set shutdown.grace explicitly in the ConfigMap (terminationGracePeriodSeconds depends on it)")
    grace = duration_seconds(eff["shutdown"]["grace"])
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    margin = tgps - pre_stop - grace
    if margin < 10:
        fail(f"terminationGracePeriodSeconds {tgps} leaves {margin:.0f} s after the preStop pause "
             f"({pre_stop} s) and shutdown.grace ({grace:.0f} s); keep at least 10 s")
    print(f"config: shutdown.grace {grace:.0f} s + preStop {pre_stop} s, terminationGracePeriodSeconds {tgps} (margin {margin:.0f} s); "
          f"spool.dir {spool_dir} on the claim at {spool_mount}")


# --- dashboard --------------------------------------------------------------------------------

def check_dashboard(path, rules_out):
    with open(path) as f:
        d = json.load(f)
    if not 36 <= d.get("schemaVersion", 0) <= 41:
        fail(f"dashboard schemaVersion {d.get('schemaVersion')} is not a recent one (36-41)")
    for key in ("uid", "title", "panels", "templating"):
        if not d.get(key):
            fail(f"dashboard has no {key}")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard needs a `datasource` variable of type datasource over prometheus")
    ids, exprs, boxes = set(), [], []
    for p in d["panels"]:
        if p["id"] in ids:
            fail(f"panel id {p['id']} used twice")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24 or g["w"] < 1 or g["h"] < 1:
            fail(f"panel {p['title']!r} lies outside the 24-column grid: {g}")
        for b in boxes:
            if g["x"] < b["x"] + b["w"] and b["x"] < g["x"] + g["w"] and g["y"] < b["y"] + b["h"] and b["y"] < g["y"] + g["h"]:
                fail(f"panel {p['title']!r} overlaps another: {g} / {b}")
        boxes.append(g)
        if p["type"] == "row":
            continue
        if not p.get("description"):
            fail(f"panel {p['title']!r} has no description")
        sources = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]
        for s in sources:
            if s != {"type": "prometheus", "uid": "${datasource}"}:
                fail(f"panel {p['title']!r} uses data source {s}, not the ${{datasource}} variable")
        if not p.get("targets"):
            fail(f"panel {p['title']!r} has no query")
        refs = [t["refId"] for t in p.get("targets", [])]
        if len(set(refs)) != len(refs):
            fail(f"panel {p['title']!r} repeats a refId")
        for t in p.get("targets", []):
            exprs.append((p["title"], t["refId"], t["expr"]))
    # Grafana's variables replaced by values promtool can parse.
    rules = []
    for i, (title, ref, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$instance", ".*")
        if "$" in e:
            fail(f"panel {title!r} {ref}: unknown variable in {e}")
        rules.append({"record": f"dashboard:panel_{i}", "expr": e})
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
    print(f"dashboard: {len(ids)} panels, {len(exprs)} queries")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "kustomization":
        check_kustomization(argv[2])
    elif cmd == "prometheusrule":
        check_prometheus_rule(argv[2:] == ["--write"])
    elif cmd == "alerts":
        check_alerts()
    elif cmd == "kubernetes":
        check_base(argv[2])
        check_kubernetes(argv[3])
    elif cmd == "podenv":
        podenv(argv[2], argv[3], argv[4])
    elif cmd == "config":
        check_config(argv[2], argv[3])
    elif cmd == "dashboard":
        check_dashboard(argv[2], argv[3])
    else:
        sys.exit(__doc__)
    for p in problems:
        print(f"FAIL {cmd}: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
