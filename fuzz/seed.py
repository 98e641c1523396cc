#!/usr/bin/env python3
"""Seeds each fuzz target's corpus from the test fixtures (fuzz/corpus/<target>/, not tracked).

The decision corpus (tests/fixtures/corpus.jsonl) gives real JWTs, service tokens, API keys
and whole requests; policies/ gives policies; a few lines give revocation files and feeds.
"""
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"


def put(target: str, data: bytes) -> None:
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


for line in (ROOT / "tests/fixtures/corpus.jsonl").read_text().splitlines():
    if not line.strip():
        continue
    case = json.loads(line)
    req = case.get("request", {})
    headers = req.get("headers", [])
    if isinstance(headers, dict):
        headers = list(headers.items())
    for name, value in headers:
        lname = name.lower()
        if lname == "authorization":
            put("bearer", value.encode())
            token = value.split(" ", 1)[1] if " " in value else value
            put("jwt", token.encode())
            put("service_token", b"worker-1\0" + token.encode())
        elif lname == "x-api-key":
            put("api_key", value.encode())
        elif lname == "x-worker-id":
            for n, v in headers:
                if n.lower() == "authorization" and " " in v:
                    put("service_token", value.encode() + b"\0" + v.split(" ", 1)[1].encode())
    # The request target takes arbitrary's own encoding: the raw path is still a useful seed.
    put("request", json.dumps(req).encode())

for p in sorted((ROOT / "policies").glob("*.yaml")):
    put("policy", p.read_bytes())
for p in sorted((ROOT / "tests/fixtures/policies").glob("**/*.yaml")):
    put("policy", p.read_bytes())

put("revocation_file", b'{"portcullis_revocations":1,"log":"a"}\n'
    b'{"kind":"jti","id":"j1","actor":"ops","created_at":1}\n'
    b'{"kind":"subject","id":"alice","issued_before":5,"tenant":"acme","reason":"r","actor":"a","created_at":1,"expires_at":9}\n')
put("revocation_file", json.dumps({
    "source": "log", "cursor": 3, "fresh": True,
    "snapshot": [{"kind": "api-key", "id": "k"}, {"kind": "subject", "id": "s", "issued_before": 7}],
    "changes": [{"seq": 4, "op": "unrevoke", "kind": "jti", "id": "x"}],
}).encode())
print(f"seeded {OUT}")
