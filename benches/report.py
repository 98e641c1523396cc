#!/usr/bin/env python3
"""Print criterion results as Markdown tables with ratios against the peer in the same group.

Usage: python3 benches/report.py [GROUP_PREFIX ...]
Reads target/criterion/<group>/<bench>/new/estimates.json (written by `cargo bench`).
The first benchmark whose id starts with `portcullis/` is the subject; every other benchmark in
the group is a peer or a floor, shown as its time divided by Portcullis' time (above 1.0: the
peer is slower; a floor is below 1.0 by definition).
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "target" / "criterion"


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def groups(prefixes):
    for est in sorted(ROOT.glob("**/new/estimates.json")):
        bench_dir = est.parent.parent
        rel = bench_dir.relative_to(ROOT).parts
        if len(rel) < 2 or rel[0] == "report":
            continue
        group, bench = rel[0], "/".join(rel[1:])
        name = json.loads((bench_dir / "new" / "benchmark.json").read_text())
        group_id = name.get("group_id", group)
        if prefixes and not any(group_id.startswith(p) for p in prefixes):
            continue
        median = json.loads(est.read_text())["median"]["point_estimate"]
        yield group_id, name.get("function_id") or bench, median


def main():
    table = {}
    for g, b, m in groups(sys.argv[1:]):
        table.setdefault(g, {})[b] = m
    print("| group | benchmark | median | ÷ Portcullis |")
    print("| --- | --- | --- | --- |")
    for g in sorted(table):
        rows = table[g]
        subject = next((v for k, v in sorted(rows.items()) if k.startswith("portcullis/")), None)
        for b, m in sorted(rows.items(), key=lambda kv: (not kv[0].startswith("portcullis/"), kv[0])):
            if b.startswith("portcullis/") or subject is None:
                ratio = ""
            else:
                r = m / subject
                ratio = f"{r:,.0f}x" if r >= 100 else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")
            print(f"| {g} | {b} | {fmt(m)} | {ratio} |")


if __name__ == "__main__":
    main()
