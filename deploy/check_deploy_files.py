"""Structural checks of deploy/ that no schema covers; run by deploy/check-deploy-files.sh.

    check_deploy_files.py kustomization          the base lists every manifest in its directory
    check_deploy_files.py kubernetes RENDERED DRAIN_POD
                                                 cross-references inside the rendered base, the
                                                 ServiceMonitor against a schema of our own, and the
                                                 drain pod against the StatefulSet
    check_deploy_files.py extract RENDERED DIR   writes the ConfigMap's hookbridge.toml and the
                                                 Secret's signing-secrets into DIR
    check_deploy_files.py config RENDERED EFFECTIVE_TOML
                                                 the configuration `hookbridge check-config` printed
                                                 agrees with the StatefulSet (ports, paths, grace)
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
K8S = os.path.join(HERE, "kubernetes")
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

def check_kustomization():
    k = load_all(os.path.join(K8S, "kustomization.yaml"))[0]
    listed = k.get("resources", [])
    files = sorted(f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    for f in files:
        if f not in listed:
            fail(f"deploy/kubernetes/{f} is not listed in kustomization.yaml resources")
    for f in listed:
        if f not in files:
            fail(f"kustomization.yaml lists {f}, which is not a manifest in deploy/kubernetes")
    if len(set(listed)) != len(listed):
        fail("kustomization.yaml lists a resource twice")
    for f in files:
        for d in load_all(os.path.join(K8S, f)):
            for key in ("apiVersion", "kind", "metadata"):
                if key not in d:
                    fail(f"{f}: a document without {key}")


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


# --- the rendered base ------------------------------------------------------------------------

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

    # Services: the headless one governs the StatefulSet; both select the pods and name the ports.
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
    if ports != {"ingress": 8080, "admin": 9090}:
        fail(f"container ports should be ingress 8080 and admin 9090, are {ports}")

    pdb = one(kinds, "PodDisruptionBudget", "hookbridge")
    if pdb and not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
        fail("PodDisruptionBudget does not select the hookbridge pods")

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
    if c.get("image") != "hookbridge:0.1.0":
        fail(f"image should be hookbridge:0.1.0, is {c.get('image')}")
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in c.get("resources", {}).get(k, {}):
                fail(f"resources.{k}.{r} is missing")

    # ServiceMonitor: our schema, then its selector and port against the Services.
    sm = one(kinds, "ServiceMonitor", "hookbridge")
    if sm:
        for err in jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(sm):
            fail(f"ServiceMonitor: {'.'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}")
        selected = [s for s in services if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if len(selected) != 1:
            fail(f"ServiceMonitor selects {len(selected)} Services; it must select exactly one "
                 "(selecting the headless one too would scrape every pod twice)")
        for svc in selected:
            names = {p["name"] for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    fail(f"ServiceMonitor endpoint port {ep.get('port')} is not a port of Service {svc['metadata']['name']}")
                elif ep["port"] != "admin":
                    fail("ServiceMonitor must scrape the admin port")


def check_drain_pod(rendered, drain_path):
    """The drain pod mounts a claim the StatefulSet made, the way the StatefulSet mounts it, and
    no Service sends it traffic."""
    kinds = by_kind(load_all(rendered))
    sts = one(kinds, "StatefulSet", "hookbridge")
    (pod,) = load_all(drain_path)
    if not sts:
        return
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    (d,) = pod["spec"]["containers"]
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
    for svc in kinds.get("Service", []):
        if matches(svc["spec"]["selector"], pod["metadata"]["labels"]):
            fail(f"Service {svc['metadata']['name']} would send deliveries to the drain pod")


def extract(rendered, out_dir):
    kinds = by_kind(load_all(rendered))
    cm = one(kinds, "ConfigMap", "hookbridge-config")
    secret = one(kinds, "Secret", "hookbridge-signing-secrets")
    with open(os.path.join(out_dir, "hookbridge.toml"), "w") as f:
        f.write(cm["data"]["hookbridge.toml"])
    with open(os.path.join(out_dir, "signing-secrets.placeholder"), "w") as f:
        f.write(secret["stringData"]["signing-secrets"])


def check_config(rendered, effective_path):
    """The configuration as hookbridge itself read it, against the pod that runs it."""
    kinds = by_kind(load_all(rendered))
    sts = one(kinds, "StatefulSet", "hookbridge")
    secret = one(kinds, "Secret", "hookbridge-signing-secrets")
    cm = one(kinds, "ConfigMap", "hookbridge-config")
    if not (sts and secret and cm):
        return
    with open(effective_path, "rb") as f:
        eff = tomllib.load(f)
    # The file as written (the check ran with the secret file path overridden by the environment).
    written = tomllib.loads(cm["data"]["hookbridge.toml"])
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    for key, port in (("http", "ingress"), ("admin", "admin")):
        listen = eff[key]["listen"]
        if listen != f"0.0.0.0:{ports[port]}":
            fail(f"{key}.listen is {listen}; the pod needs 0.0.0.0:{ports[port]} (container port {port})")

    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    cm_vol = next((n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "hookbridge-config"), None)
    if env.get("HOOKBRIDGE_CONFIG") != f"{mounts.get(cm_vol)}/hookbridge.toml":
        fail(f"HOOKBRIDGE_CONFIG is {env.get('HOOKBRIDGE_CONFIG')}, the ConfigMap is mounted at {mounts.get(cm_vol)}")

    spool_mount = mounts.get("spool", "")
    spool_dir = eff["spool"]["dir"]
    if not (spool_dir == spool_mount or spool_dir.startswith(spool_mount.rstrip("/") + "/")):
        fail(f"spool.dir {spool_dir} is not on the spool claim (mounted at {spool_mount})")

    sec_vol = next((n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "hookbridge-signing-secrets"), None)
    keys = list(secret.get("stringData", {})) + list(secret.get("data", {}))
    expected = [f"{mounts.get(sec_vol)}/{k}" for k in keys]
    if written.get("auth", {}).get("secret_files") != expected:
        fail(f"auth.secret_files is {written.get('auth', {}).get('secret_files')}; the Secret is mounted as {expected}")

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
        check_kustomization()
    elif cmd == "kubernetes":
        check_kubernetes(argv[2])
        check_drain_pod(argv[2], argv[3])
    elif cmd == "extract":
        extract(argv[2], argv[3])
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
