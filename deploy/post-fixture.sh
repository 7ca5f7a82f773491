#!/usr/bin/env bash
# Post a webhook body to hookbridge, signed the way Sessionboard (Svix / Standard Webhooks) signs
# it: webhook-signature = "v1," + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")).
#
#   deploy/post-fixture.sh [BODY_FILE] [URL]
#
# BODY_FILE defaults to examples/fixtures/session.updated.json, URL to
# http://127.0.0.1:8080/webhooks/sessionboard. The secret is the first non-comment line of
# $HOOKBRIDGE_SIGNING_SECRET_FILE (default: deploy/demo-signing-secret, the compose stack's), or
# $HOOKBRIDGE_SIGNING_SECRET itself. The delivery id is $WEBHOOK_ID or a fresh one.
# Needs bash, openssl, base64 (coreutils), od and curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
body=${1:-$here/../examples/fixtures/session.updated.json}
url=${2:-http://127.0.0.1:8080/webhooks/sessionboard}
secret=${HOOKBRIDGE_SIGNING_SECRET:-$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' \
  "${HOOKBRIDGE_SIGNING_SECRET_FILE:-$here/demo-signing-secret}" | head -n 1)}
case $secret in
  whsec_*) ;;
  *) echo "post-fixture: the secret must be a whsec_… signing secret" >&2; exit 2 ;;
esac
id=${WEBHOOK_ID:-msg_$(date +%s)_$$_$RANDOM}
ts=$(date +%s)
# The key is the base64 part of the secret, decoded; openssl takes it as hex.
key=$(printf '%s' "${secret#whsec_}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
sig=$({ printf '%s.%s.' "$id" "$ts"; cat "$body"; } \
  | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | base64 -w0)
curl -sS --fail-with-body -X POST "$url" \
  -H 'content-type: application/json' \
  -H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$sig" \
  --data-binary "@$body"
echo
