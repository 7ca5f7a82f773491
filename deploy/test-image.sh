#!/usr/bin/env bash
# Builds the container image's runtime stage from deploy/Containerfile and runs the real binary
# inside it: the one that would ship, minus the Rust build stage.
#
# Why not simply `docker build` + `docker run`: no image registry is reachable here (no
# rust:1-bookworm, no debian:bookworm-slim) and the sandbox refuses a container runtime's rlimit
# calls. So:
#   * the base image is made from Debian packages with mmdebstrap (minbase with the docs, man
#     pages and locales left out, as debian:bookworm-slim is made) and imported as
#     localhost/debian:bookworm-slim;
#   * the binary is built on this (Debian 12) host, and the Containerfile's build stage is
#     swapped for a stage that copies it to /out/hookbridge; the runtime stage is taken from
#     deploy/Containerfile verbatim;
#   * the image's contents are run with `buildah run --isolation chroot --network host`: same
#     filesystem, user, environment and config file as in a container, no namespaces.
#
# What it checks: a runtime stage without libssl3 cannot start the binary (the check below would
# catch it); the image has no missing shared library; its metadata (non-root 10001, volume,
# exec-form entrypoint, STOPSIGNAL, HEALTHCHECK, HOOKBRIDGE_CONFIG); the bridge refuses to start
# on 0.0.0.0 without auth; with a mounted signing secret it starts against the local NATS,
# accepts a signed fixture (and refuses an unsigned one), publishes it to JetStream byte for byte;
# `hookbridge probe ready|live` inside the image; SIGTERM stops it cleanly.
#
# Needs root, NATS with JetStream on 127.0.0.1:4222 (HOOKBRIDGE_TEST_NATS_URL), Debian 12.
# Installs podman, buildah, mmdebstrap (apt) and nats-py (pip) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)
step() { echo "test-image: [$(($(date +%s) - started))s] $*"; }
fail() {
  echo "test-image: FAIL: $*" >&2
  exit 1
}
# A distribution's own Python refuses pip outside a virtualenv (PEP 668); these are test tools.
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$@"
}
nats_url=${HOOKBRIDGE_TEST_NATS_URL:-nats://127.0.0.1:4222}
image=localhost/hookbridge:test
base=localhost/debian:bookworm-slim

# --- tools ------------------------------------------------------------------------------------
missing=()
for tool in podman buildah mmdebstrap openssl curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import nats' 2>/dev/null; then
  step "installing nats-py (reads the stream back)"
  pip_install "nats-py==2.16.0"
fi

# --- the release binary, stripped as the build stage strips it ---------------------------------
step "cargo build --release"
cargo build --release --locked --bin hookbridge
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
work=$(mktemp -d /tmp/hookbridge-image-test.XXXXXX)
ctx=$work/context
mkdir -p "$ctx/deploy"
cp deploy/container.toml "$ctx/deploy/"
cp "$target_dir/release/hookbridge" "$ctx/hookbridge"
strip --strip-debug "$ctx/hookbridge"
# deploy/Containerfile with its build stage replaced by a copy of that binary. Everything from
# the runtime stage's FROM on is the file's own text.
python3 - deploy/Containerfile "$work/Containerfile" <<'EOF'
import sys

src = open(sys.argv[1]).read()
build, runtime = "FROM ${RUST_IMAGE} AS build\n", "FROM ${RUNTIME_IMAGE} AS runtime\n"
assert src.count(build) == 1 and src.count(runtime) == 1, "stage markers not found"
head, rest = src.split(build)
_, runtime_stage = rest.split(runtime)
assert "\nFROM " not in runtime_stage, "the runtime stage must be the last one"
out = head + "FROM scratch AS build\nCOPY hookbridge /out/hookbridge\n\n" + runtime + runtime_stage
open(sys.argv[2], "w").write(out)
EOF

naive= ctr= bridge_pid=
cleanup() {
  if [ -n "$bridge_pid" ] && kill -0 "$bridge_pid" 2>/dev/null; then
    kill "$bridge_pid" 2>/dev/null || true
    wait "$bridge_pid" 2>/dev/null || true
  fi
  for c in $naive $ctr; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the base image ----------------------------------------------------------------------------
if ! podman image exists "$base"; then
  step "making $base with mmdebstrap"
  mmdebstrap --variant=minbase --quiet \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm "$work/base.tar"
  podman import --quiet "$work/base.tar" "$base" >/dev/null
  rm -f "$work/base.tar"
fi
run_in() { # run_in CONTAINER [buildah run options…] -- COMMAND…
  local c=$1 opts=()
  shift
  while [ "$1" != -- ]; do
    opts+=("$1")
    shift
  done
  shift
  buildah run --isolation chroot --network host "${opts[@]}" "$c" -- "$@"
}

# --- the surprise: a runtime stage without libssl3 --------------------------------------------
step "a naive runtime stage (base image + binary, no libssl3) cannot start the bridge"
naive=$(buildah from --pull-never "$base")
buildah copy --quiet "$naive" "$ctx/hookbridge" /hookbridge >/dev/null
naive_ldd=$(run_in "$naive" -- ldd /hookbridge 2>&1 || true)
grep -q 'libssl.so.3 => not found' <<<"$naive_ldd" || fail "expected libssl.so.3 to be missing: $naive_ldd"
if naive_out=$(run_in "$naive" -- /hookbridge --version 2>&1); then
  fail "the binary started without libssl3: $naive_out"
fi
grep -q 'libssl.so.3: cannot open shared object file' <<<"$naive_out" || fail "unexpected: $naive_out"
echo "  $(grep -m1 'libssl' <<<"$naive_out")"
buildah rm "$naive" >/dev/null
naive=

# --- build the runtime stage ---------------------------------------------------------------------
step "podman build of the runtime stage (binary from the host)"
build_started=$(date +%s)
# --format docker keeps HEALTHCHECK and STOPSIGNAL (OCI image configs have no HEALTHCHECK).
# --layers=false: no intermediate images are left behind (the apt step runs every time, ~6 s).
podman build --quiet --isolation chroot --network host --layers=false --format docker \
  --pull=never -f "$work/Containerfile" --target runtime --build-arg RUNTIME_IMAGE="$base" \
  --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -t "$image" "$ctx" >/dev/null
build_secs=$(($(date +%s) - build_started))

step "image metadata"
podman image inspect "$image" | python3 -c '
import json, sys
image = json.load(sys.stdin)[0]
c = image["Config"]
want = {
    "User": "10001:10001",
    "Entrypoint": ["/usr/local/bin/hookbridge"],
    "Cmd": ["run"],
    "StopSignal": "SIGTERM",
    "WorkingDir": "/var/lib/hookbridge",
}
for k, v in want.items():
    assert c.get(k) == v, f"{k}: {c.get(k)!r} != {v!r}"
assert "/var/lib/hookbridge" in c.get("Volumes", {}), c.get("Volumes")
assert "HOOKBRIDGE_CONFIG=/etc/hookbridge/hookbridge.toml" in c["Env"], c["Env"]
assert set(c.get("ExposedPorts", {})) == {"8080/tcp", "9090/tcp"}, c.get("ExposedPorts")
labels = c.get("Labels") or {}
for k in ("title", "version", "revision", "created", "base.name"):
    assert labels.get(f"org.opencontainers.image.{k}"), f"OCI label {k} missing: {labels}"
assert labels["org.opencontainers.image.base.name"] == sys.argv[1], labels
hc = image["Healthcheck"]["Test"]
assert hc[:4] == ["CMD", "/usr/local/bin/hookbridge", "probe", "ready"], hc
print("  user", c["User"], "| entrypoint", c["Entrypoint"], c["Cmd"], "| healthcheck", " ".join(hc[1:]))
' "$base"
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")

ctr=$(buildah from --pull-never "$image")
step "no missing shared library in the image"
ldd_out=$(run_in "$ctr" -- ldd /usr/local/bin/hookbridge)
echo "$ldd_out" | sed 's/^/  /'
! grep -q 'not found' <<<"$ldd_out" || fail "missing libraries in the image"
[ "$(run_in "$ctr" -- id -u)" = 10001 ] || fail "not running as uid 10001"
[ "$(run_in "$ctr" -- stat -c %u:%g /var/lib/hookbridge)" = 10001:10001 ] || fail "volume not owned by 10001"

step "the image's config refuses 0.0.0.0 without authentication"
if out=$(run_in "$ctr" -- /usr/local/bin/hookbridge check-config 2>&1); then
  fail "check-config passed without auth: $out"
fi
grep -q 'allow_unauthenticated' <<<"$out" || fail "unexpected: $out"

# --- run the bridge in the image ---------------------------------------------------------------
# A loopback port nothing listens on (below the ephemeral range, so no connection takes it first).
free_port() { python3 deploy/free-port.py; }
http_port=$(free_port)
admin_port=$(free_port)
tag="i8img$$x$(date +%s)"
stream=${tag^^}
secret="whsec_$(head -c 24 /dev/urandom | base64)"
mkdir -p "$work/volume" && chown 10001:10001 "$work/volume"
printf '# test secret\n%s\n' "$secret" >"$work/signing-secret"
chmod 0644 "$work/signing-secret"
# As in deploy/compose.yaml: the secret is a mounted file, the volume a directory, listeners on
# 0.0.0.0 (here on free ports, since the network is the host's).
bridge_env=(
  --env "HOOKBRIDGE_HTTP__LISTEN=0.0.0.0:$http_port"
  --env "HOOKBRIDGE_ADMIN__LISTEN=0.0.0.0:$admin_port"
  --env "HOOKBRIDGE_SINK__NATS__URL=$nats_url"
  --env "HOOKBRIDGE_SINK__NATS__STREAM=$stream"
  --env "HOOKBRIDGE_ROUTING__PREFIX=$tag."
  --env 'HOOKBRIDGE_AUTH__SECRET_FILES=["/run/secrets/hookbridge_signing_secret"]'
)
mounts=(
  --volume "$work/volume:/var/lib/hookbridge"
  --volume "$work/signing-secret:/run/secrets/hookbridge_signing_secret:ro"
)
step "hookbridge run inside the image (admin 0.0.0.0:$admin_port, stream $stream)"
run_in "$ctr" "${bridge_env[@]}" "${mounts[@]}" -- /usr/local/bin/hookbridge run >"$work/bridge.log" 2>&1 &
bridge_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$bridge_pid" 2>/dev/null || { cat "$work/bridge.log"; fail "the bridge exited"; }
  sleep 0.1
done
echo "  /readyz: $(curl -fsS "http://127.0.0.1:$admin_port/readyz")"

step "hookbridge probe inside the image"
for check in ready live; do
  out=$(run_in "$ctr" "${bridge_env[@]}" -- /usr/local/bin/hookbridge probe "$check") ||
    fail "probe $check: $out"
  echo "  probe $check: $out"
done

step "post a signed fixture; an unsigned one is refused"
fixture=examples/fixtures/session.updated.json
id="msg_$tag"
answer=$(WEBHOOK_ID=$id HOOKBRIDGE_SIGNING_SECRET=$secret \
  deploy/post-fixture.sh "$fixture" "http://127.0.0.1:$http_port/webhooks/sessionboard")
echo "  $answer"
grep -q '"status":"accepted"' <<<"$answer" || fail "not accepted: $answer"
status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
  -H 'webhook-id: msg_unsigned' --data-binary "@$fixture" \
  "http://127.0.0.1:$http_port/webhooks/sessionboard")
[ "$status" = 401 ] || fail "unsigned delivery answered $status"

step "it arrives on JetStream"
published=0
for _ in $(seq 1 100); do
  published=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" |
    awk '/^hookbridge_published_total\{.*sink="nats"/ {n += $2} END {print n + 0}')
  [ "${published:-0}" = 1 ] && break
  sleep 0.1
done
[ "${published:-0}" = 1 ] || fail "hookbridge_published_total is ${published:-absent}"
echo "  hookbridge_published_total{sink=\"nats\"} (all endpoints and actions) $published"
python3 - "$nats_url" "$stream" "$tag.session.updated" "$id" "$fixture" <<'EOF'
import asyncio, sys

import nats

url, stream, subject, delivery_id, fixture = sys.argv[1:]

async def main():
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        msg = await js.get_msg(stream, seq=1)
        body = open(fixture, "rb").read()
        assert msg.subject == subject, msg.subject
        assert msg.data == body, "body differs from the fixture"
        assert msg.headers["webhook-id"] == delivery_id, msg.headers
        assert msg.headers["Nats-Msg-Id"] == delivery_id, msg.headers
        info = await js.stream_info(stream)
        assert info.state.messages == 1, info.state
        print(f"  {stream} seq 1: {msg.subject}, {len(msg.data)} bytes equal to {fixture}, webhook-id {delivery_id}")
    finally:
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

asyncio.run(main())
EOF

step "SIGTERM reaches the bridge, which stops cleanly"
# The bridge's own process (what PID 1 of a container is), below buildah's chroot helpers.
descendants() { for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done; }
hb=
for p in $(descendants "$bridge_pid"); do
  [ "$(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null)" = "/usr/local/bin/hookbridge run " ] && hb=$p
done
[ -n "$hb" ] || fail "bridge process not found"
stop_started=$(date +%s%N)
kill -TERM "$hb"
rc=0
wait "$bridge_pid" || rc=$?
bridge_pid=
stop_ms=$((($(date +%s%N) - stop_started) / 1000000))
[ "$rc" = 0 ] || { tail -5 "$work/bridge.log"; fail "exit status $rc after SIGTERM"; }
grep -q '"message":"stopped"' "$work/bridge.log" || fail "no clean stop in the log"
echo "  exit 0 after ${stop_ms} ms"
if out=$(run_in "$ctr" "${bridge_env[@]}" -- /usr/local/bin/hookbridge probe ready --timeout 1s 2>&1); then
  fail "probe passed with no bridge running"
fi
# (buildah adds its own lines about the exit status; the probe's is the one that starts so.)
reason=$(grep '^hookbridge probe: GET ' <<<"$out") || fail "unexpected probe output: $out"
echo "  probe ready afterwards: exit 1: $reason"

buildah rm "$ctr" >/dev/null
ctr=
podman rmi "$image" >/dev/null
step "done: image $((size / 1000000)) MB (base $((base_size / 1000000)) MB), runtime stage built in ${build_secs}s"
echo "test-image: total $(($(date +%s) - started)) s"
