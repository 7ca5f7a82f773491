"""Independent sender for the TLS tests: signs each body with the Svix library (as Sessionboard's
sender does) and POSTs it over HTTPS with `requests`, trusting only the given CA file.

For each body file it prints one JSON object: file, id, status, body. Then it sends the first
body once more with a signature over different bytes and prints that too (`"tampered": true`),
so the caller can check the bridge really verifies.
"""
import argparse
import datetime
import json
import sys

import requests
from svix.webhooks import Webhook


def send(url, ca, msg_id, body, signature, timestamp):
    r = requests.post(
        url,
        data=body.encode(),
        headers={
            "content-type": "application/json",
            "svix-id": msg_id,
            "svix-timestamp": str(int(timestamp.timestamp())),
            "svix-signature": signature,
        },
        verify=ca,
        timeout=10,
    )
    return r.status_code, r.text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--id-prefix", default="msg_tls_")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    wh = Webhook(args.secret)
    for n, path in enumerate(args.files):
        with open(path, encoding="utf-8") as f:
            body = f.read()
        msg_id = f"{args.id_prefix}{n}"
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        status, text = send(args.url, args.ca, msg_id, body, wh.sign(msg_id, now, body), now)
        print(json.dumps({"file": path, "id": msg_id, "status": status, "body": text}))

    with open(args.files[0], encoding="utf-8") as f:
        body = f.read()
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    forged_id = f"{args.id_prefix}forged"
    forged = wh.sign(forged_id, now, body + " ")
    status, text = send(args.url, args.ca, forged_id, body, forged, now)
    print(json.dumps({"file": args.files[0], "id": forged_id, "status": status,
                      "body": text, "tampered": True}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
