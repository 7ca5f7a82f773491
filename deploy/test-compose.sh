#!/usr/bin/env bash
# Checks the compose stack's files for real where no container engine can run them:
#   1. deploy/compose.yaml against the Compose Specification's JSON schema (check-jsonschema's
#      vendored copy, offline), then through docker-compose's own `config` (interpolation,
#      references between services, the sink switch and the kafka profile);
#   2. `promtool check config` on deploy/prometheus/prometheus.yml (it also checks the rule file
#      it names, deploy/prometheus/alerts.yml);
#   3. Debian's Prometheus with that very file (its scrape target rewritten from hookbridge:9090 to
#      a real bridge on loopback, which runs deploy/compose.toml with the stack's demo secrets)
#      scraping the bridge: the target is up, deliveries posted to both endpoints (each signed
#      with its own demo secret; the default one's secret refused on the sandbox path) show up as
#      hookbridge_published_total, and the alert rule file is loaded;
#   4. the Grafana provisioning files parse and name the paths compose mounts.
# `docker compose up` itself is not run: there is no container engine here.
#
# Needs root, NATS with JetStream on 127.0.0.1:4222 (HOOKBRIDGE_TEST_NATS_URL). Installs
# prometheus (apt: prometheus, promtool), docker-compose (apt, v1) and check-jsonschema (pip) when
# missing. Prometheus listens on a free loopback port only.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { echo "test-compose: [$(($(date +%s) - started))s] $*"; }
fail() {
  echo "test-compose: FAIL: $*" >&2
  exit 1
}
# A distribution's own Python refuses pip outside a virtualenv (PEP 668); these are test tools.
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$@"
}
nats_url=${HOOKBRIDGE_TEST_NATS_URL:-nats://127.0.0.1:4222}

# --- tools ------------------------------------------------------------------------------------
missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
for tool in openssl curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v check-jsonschema >/dev/null; then
  step "installing check-jsonschema"
  pip_install "check-jsonschema==0.39.0"
fi
python3 -c 'import yaml' 2>/dev/null || pip_install "PyYAML==6.0.3"

work=$(mktemp -d /tmp/hookbridge-compose-test.XXXXXX)
bridge_pid= prom_pid=
cleanup() {
  for p in $prom_pid $bridge_pid; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. the compose file ----------------------------------------------------------------------
step "deploy/compose.yaml against the compose-spec schema"
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
# docker-compose 1.29 predates the top-level `name`; it checks everything else, so give it the
# file without that one line.
# Relative paths in it resolve against --project-directory, as they would for the original.
grep -v '^name: ' deploy/compose.yaml >"$work/compose-v1.yaml"
v1() { docker-compose --project-directory deploy -f "$work/compose-v1.yaml" "$@"; }
step "docker-compose config: default (NATS) and kafka profile"
v1 config -q
v1 config >"$work/nats.yaml"
HOOKBRIDGE_SINK=kafka COMPOSE_PROFILES=kafka v1 config >"$work/kafka.yaml"
python3 - "$work/nats.yaml" "$work/kafka.yaml" <<'EOF'
import sys, yaml

nats, kafka = (yaml.safe_load(open(p)) for p in sys.argv[1:])
env = nats["services"]["hookbridge"]["environment"]
assert env["HOOKBRIDGE_SINK__KIND"] == "nats", env
assert kafka["services"]["hookbridge"]["environment"]["HOOKBRIDGE_SINK__KIND"] == "kafka"
assert "kafka" in kafka["services"], "kafka profile has no kafka service"
hb = nats["services"]["hookbridge"]
assert env["HOOKBRIDGE_CONFIG"] == "/etc/hookbridge/compose.toml", env
targets = [v["target"] if isinstance(v, dict) else str(v).split(":")[1] for v in hb["volumes"]]
assert "/etc/hookbridge/compose.toml" in targets, hb["volumes"]
mounted = sorted(s if isinstance(s, str) else s["source"] for s in hb["secrets"])
assert mounted == ["hookbridge_sandbox_signing_secret", "hookbridge_signing_secret"], mounted
assert hb["stop_grace_period"] == "30s", hb.get("stop_grace_period")
for s in nats["services"].values():
    for p in s.get("ports", []):
        assert str(p).startswith("127.0.0.1:"), f"published beyond loopback: {p}"
print("  sink nats by default, kafka with the profile; compose.toml and two secrets mounted; ports on 127.0.0.1 only")
EOF
step "deploy/compose.toml: deploy/container.toml plus two endpoints, each with its own secret"
python3 - <<'EOF'
import tomllib, yaml

compose = tomllib.load(open("deploy/compose.toml", "rb"))
image = tomllib.load(open("deploy/container.toml", "rb"))
endpoints = compose.pop("endpoints")
auth = compose.pop("auth")
assert compose == image, f"compose.toml and container.toml differ beyond [auth] and [[endpoints]]:\n{compose}\n{image}"
names = ["hookbridge_signing_secret", "hookbridge_sandbox_signing_secret"]
files = [auth["secret_files"]] + [e["auth"]["secret_files"] for e in endpoints]
assert files == [[f"/run/secrets/{n}"] for n in names], files
secrets = yaml.safe_load(open("deploy/compose.yaml"))["secrets"]
assert all(n in secrets for n in names), secrets
assert [(e["name"], e["path"], e["routing"]["prefix"]) for e in endpoints] == [
    ("sandbox", "/webhooks/sandbox", "sandbox.sessionboard.")], endpoints
print("  container.toml's keys; the default and sandbox endpoints on their own secret files")
EOF
step "every file compose mounts or builds from exists"
for f in deploy/Containerfile deploy/container.toml deploy/compose.toml deploy/demo-signing-secret \
  deploy/demo-sandbox-signing-secret \
  deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml \
  deploy/grafana/provisioning/datasources/prometheus.yml \
  deploy/grafana/provisioning/dashboards/hookbridge.yml; do
  [ -f "$f" ] || fail "$f is missing"
done
# The dashboard itself (deploy/grafana/hookbridge.json) is checked only if it is there: it is
# written separately.
if [ -f deploy/grafana/hookbridge.json ]; then
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/grafana/hookbridge.json
fi

# --- 2. promtool ------------------------------------------------------------------------------
step "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

# --- 4. Grafana provisioning (before the slow part) -------------------------------------------
step "Grafana provisioning files"
python3 - <<'EOF'
import yaml

ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
[d] = ds["datasources"]
assert d["type"] == "prometheus" and d["url"] == "http://prometheus:9090" and d["uid"] == "prometheus", d
dash = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/hookbridge.yml"))
[p] = dash["providers"]
compose = yaml.safe_load(open("deploy/compose.yaml"))
mounts = compose["services"]["grafana"]["volumes"]
want = "./grafana/hookbridge.json:" + p["options"]["path"] + "/hookbridge.json:ro"
assert want in mounts, (want, mounts)
print("  datasource uid 'prometheus' ->", d["url"], "| dashboards from", p["options"]["path"])
EOF

# --- 3. Prometheus scraping a real bridge -----------------------------------------------------
step "cargo build --release"
cargo build --release --locked --bin hookbridge
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# A loopback port nothing listens on (below the ephemeral range, so no connection takes it first).
free_port() { python3 deploy/free-port.py; }
http_port=$(free_port)
admin_port=$(free_port)
prom_port=$(free_port)
tag="i8prom$$x$(date +%s)"
# The stack's own configuration file and demo secrets, with compose's mount points under $work;
# the environment moves the listeners to loopback, the spool under $work and the sink to this
# machine's NATS (core: no stream to clean up afterwards) under a prefix of its own.
mkdir -p "$work/run/secrets"
cp deploy/demo-signing-secret "$work/run/secrets/hookbridge_signing_secret"
cp deploy/demo-sandbox-signing-secret "$work/run/secrets/hookbridge_sandbox_signing_secret"
sed "s#/run/secrets/#$work/run/secrets/#" deploy/compose.toml >"$work/compose.toml"
HOOKBRIDGE_CONFIG=$work/compose.toml \
  HOOKBRIDGE_HTTP__LISTEN=127.0.0.1:$http_port HOOKBRIDGE_ADMIN__LISTEN=127.0.0.1:$admin_port \
  HOOKBRIDGE_SPOOL__DIR=$work/spool HOOKBRIDGE_SINK__NATS__URL=$nats_url \
  HOOKBRIDGE_SINK__NATS__MODE=core HOOKBRIDGE_ROUTING__PREFIX=$tag. \
  "$target_dir/release/hookbridge" run >"$work/bridge.log" 2>&1 &
bridge_pid=$!

mkdir -p "$work/prometheus"
sed "s/\"hookbridge:9090\"/\"127.0.0.1:$admin_port\"/" deploy/prometheus/prometheus.yml \
  >"$work/prometheus/prometheus.yml"
grep -q "127.0.0.1:$admin_port" "$work/prometheus/prometheus.yml" || fail "target not rewritten"
cp deploy/prometheus/alerts.yml "$work/prometheus/alerts.yml"
step "prometheus on 127.0.0.1:$prom_port scraping the bridge at 127.0.0.1:$admin_port"
prometheus --config.file="$work/prometheus/prometheus.yml" \
  --web.listen-address="127.0.0.1:$prom_port" --storage.tsdb.path="$work/tsdb" \
  >"$work/prometheus.log" 2>&1 &
prom_pid=$!

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$bridge_pid" 2>/dev/null || { cat "$work/bridge.log"; fail "the bridge exited"; }
  sleep 0.1
done
answer=$(deploy/post-fixture.sh \
  examples/fixtures/session.created.json "http://127.0.0.1:$http_port/webhooks/sessionboard")
grep -q '"status":"accepted"' <<<"$answer" || fail "not accepted: $answer"
answer=$(HOOKBRIDGE_SIGNING_SECRET_FILE=deploy/demo-sandbox-signing-secret deploy/post-fixture.sh \
  examples/fixtures/session.updated.json "http://127.0.0.1:$http_port/webhooks/sandbox")
grep -q '"status":"accepted"' <<<"$answer" || fail "sandbox: not accepted: $answer"
# A secret opens its own endpoint only.
if answer=$(deploy/post-fixture.sh examples/fixtures/session.updated.json \
  "http://127.0.0.1:$http_port/webhooks/sandbox" 2>&1); then
  fail "the default endpoint's secret opened the sandbox endpoint: $answer"
fi
grep -q '401' <<<"$answer" || fail "sandbox with the default secret: not a 401: $answer"
echo "  accepted on /webhooks/sessionboard and /webhooks/sandbox, each with its own secret; the other's refused"

api() { curl -fsS "http://127.0.0.1:$prom_port/api/v1/$1"; }
# The job scrapes every 5 s; a few scrapes after the post the counter is there.
ok=
for _ in $(seq 1 60); do
  if api 'query?query=hookbridge_published_total' 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
sys.exit(0 if any(float(x["value"][1]) >= 1 for x in r) else 1)' 2>/dev/null; then
    ok=1
    break
  fi
  kill -0 "$prom_pid" 2>/dev/null || { tail -20 "$work/prometheus.log"; fail "prometheus exited"; }
  sleep 1
done
[ -n "$ok" ] || { tail -20 "$work/prometheus.log"; fail "hookbridge_published_total never reached Prometheus"; }
api targets | python3 -c '
import json, sys
[t] = json.load(sys.stdin)["data"]["activeTargets"]
assert t["health"] == "up" and t["labels"]["job"] == "hookbridge", t
print("  target", t["scrapeUrl"], "health", t["health"])'
api 'query?query=hookbridge_published_total' | python3 -c '
import json, sys
for x in json.load(sys.stdin)["data"]["result"]:
    print("  query hookbridge_published_total", x["metric"], "=", x["value"][1])'
# The rule file is loaded (the group count is whatever deploy/prometheus/alerts.yml holds).
expected_groups=$(python3 -c 'import sys, yaml; print(len(yaml.safe_load(open(sys.argv[1]))["groups"] or []))' \
  deploy/prometheus/alerts.yml)
api rules | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
assert len(groups) == int(sys.argv[1]), (len(groups), sys.argv[1])
print("  rule groups loaded:", len(groups), [g["name"] for g in groups])' "$expected_groups"
ss -ltn "sport = :$prom_port" | grep -q "127.0.0.1:$prom_port" || fail "prometheus is not on loopback"

step "done"
echo "test-compose: total $(($(date +%s) - started)) s"
