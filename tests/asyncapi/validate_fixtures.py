"""Validates Sessionboard bodies against the message schemas of an AsyncAPI document printed by
`hookbridge asyncapi --format json` (stdin), with jsonschema (draft 7, the AsyncAPI schema
format's base). Each body is checked against the message of the channel for its
`metadata.action`; a body whose action has no channel, or that fails its schema, fails the run.
Prints one line per body. Run by tests/asyncapi.rs; scripts/test installs jsonschema.
"""
import json
import sys

from jsonschema import Draft7Validator


def main():
    doc = json.load(sys.stdin)
    by_action = {}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            name = ref["$ref"].rsplit("/", 1)[1]
            by_action[doc["components"]["messages"][name]["name"]] = (name, channel["address"])
    failed = 0
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            body = json.loads(f.read())
        action = body["metadata"]["action"]
        if action not in by_action:
            print(f"FAIL {path}: no channel for {action}")
            failed += 1
            continue
        name, address = by_action[action]
        # The payload's $refs point into the document's components: validate with them at root.
        schema = dict(doc["components"]["messages"][name]["payload"])
        schema["components"] = doc["components"]
        errors = sorted(Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
        if errors:
            failed += 1
            for e in errors:
                print(f"FAIL {path}: {'/'.join(map(str, e.path))}: {e.message}")
        else:
            print(f"ok {path}: {action} on {address} ({name})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
