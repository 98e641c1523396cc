#!/usr/bin/env python3
"""Fails when a private key or secret appears in a tracked file outside the declared demo
fixtures (.secret-scan-allow). Run from anywhere inside the repository; `--root DIR` scans
another checkout (the tests plant secrets in a scratch repository to prove it catches them).

What counts as a secret: PEM private keys, JWKs with private members (an RSA/EC/OKP "d", or an
"oct" key's "k"), Portcullis API keys (`ask_` + 20 or more base62 characters), AWS access keys,
GitHub and Slack tokens, and signed JWTs (three base64url parts with a signature), which are
bearer credentials. Each hit prints file:line and the kind, never the secret itself.
"""
import fnmatch
import json
import pathlib
import re
import subprocess
import sys

PATTERNS = [
    ("PEM private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")),
    ("Portcullis API key", re.compile(r"\bask_[A-Za-z0-9]{20,}")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("signed JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")),
]


def jwk_secrets(obj):
    """Yields the kind of each private JWK member in a parsed JSON document."""
    if isinstance(obj, dict):
        kty = obj.get("kty")
        if kty in ("RSA", "EC", "OKP") and "d" in obj:
            yield f"private {kty} JWK"
        if kty == "oct" and "k" in obj:
            yield "symmetric (oct) JWK"
        for v in obj.values():
            yield from jwk_secrets(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from jwk_secrets(v)


def self_test() -> int:
    """Plants each kind of secret in a scratch repository and checks that every one is caught,
    and that the allow list and a clean file pass."""
    import tempfile
    planted = {
        "key.pem": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        "k.json": json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}]}),
        "h.json": json.dumps({"kty": "oct", "k": "c2VjcmV0"}),
        "conf.yaml": "api_key: ask_" + "A1b2C3d4E5f6G7h8I9j0K" + "\n",
        "aws.env": "AWS_ACCESS_KEY_ID=" + "AKIA" + "ABCDEFGHIJKLMNOP\n",
        "t.txt": "eyJhbGciOiJIUzI1NiJ9." + "eyJzdWIiOiJhIn0." + "abcdefghijklmnopqrstuv\n",
    }
    with tempfile.TemporaryDirectory() as d:
        root = pathlib.Path(d)
        subprocess.check_call(["git", "init", "-q", d])
        for name, text in planted.items():
            (root / name).write_text(text)
        (root / "clean.rs").write_text("fn main() {}\n")
        (root / "demo.pem").write_text(planted["key.pem"])
        (root / ".secret-scan-allow").write_text("demo.pem\n")
        subprocess.check_call(["git", "add", "-A"], cwd=d)
        out = subprocess.run([sys.executable, __file__, "--root", d], capture_output=True, text=True)
        caught = {l.split(":")[1].strip() for l in out.stderr.splitlines() if l.startswith("secret-scan: ") and " outside " in l}
        missed = set(planted) - caught
        if out.returncode != 1 or missed or "demo.pem" in caught or "clean.rs" in caught:
            print(f"secret-scan self-test FAILED: exit {out.returncode}, missed {sorted(missed)}, caught {sorted(caught)}",
                  file=sys.stderr)
            return 1
    print(f"secret-scan self-test: all {len(planted)} planted secrets caught, allow list honoured")
    return 0


def main() -> int:
    args = sys.argv[1:]
    if "--self-test" in args:
        return self_test()
    root = pathlib.Path(args[args.index("--root") + 1]) if "--root" in args else None
    if root is None:
        root = pathlib.Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    files = subprocess.check_output(["git", "ls-files", "-z"], cwd=root, text=True).split("\0")
    allow_file = root / ".secret-scan-allow"
    allowed = []
    if allow_file.exists():
        allowed = [l.strip() for l in allow_file.read_text().splitlines() if l.strip() and not l.startswith("#")]
    hits = []
    for name in filter(None, files):
        if any(fnmatch.fnmatch(name, g) for g in allowed):
            continue
        path = root / name
        if not path.is_file() or path.stat().st_size > 8 << 20:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for kind, pattern in PATTERNS:
            for m in pattern.finditer(text):
                hits.append((name, text.count("\n", 0, m.start()) + 1, kind))
        if name.endswith(".json") or name.endswith(".jsonl"):
            docs = []
            try:
                docs = [json.loads(text)]
            except ValueError:
                for line in text.splitlines():
                    try:
                        docs.append(json.loads(line))
                    except ValueError:
                        pass
            for doc in docs:
                for kind in jwk_secrets(doc):
                    hits.append((name, 0, kind))
    for name, line, kind in hits:
        where = f"{name}:{line}" if line else name
        print(f"secret-scan: {where}: {kind} outside the declared demo fixtures", file=sys.stderr)
    if hits:
        print(f"secret-scan: {len(hits)} finding(s); move the secret out, or, for a public demo "
              "fixture, list the file in .secret-scan-allow", file=sys.stderr)
        return 1
    print(f"secret-scan: {len([f for f in files if f])} tracked files, no secret outside the demo fixtures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
