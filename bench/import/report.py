#!/usr/bin/env python3
"""Writes bench/results/import.md from one run of bench/import/run.sh.

usage: report.py KEEP_DIR SCALE DBSIZE ROUNDS
"""
import csv
import glob
import json
import os
import statistics
import sys

keep, scale, dbsize, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def lines(name):
    p = os.path.join(keep, name)
    return open(p).read().splitlines() if os.path.exists(p) else []


def jsonl(name):
    return [json.loads(l) for l in lines(name) if l.strip()]


load = {l.split()[0]: l for l in lines("load.txt")}
start = load.get("start", "start ? load ?").split()
samples = [float(l.split()[1]) for l in lines("load-samples.txt") if len(l.split()) == 2]
out = []
w = out.append
w("# Import beside pg_dump")
w("")
w(f"One run of `bench/import/run.sh` ({start[1] if len(start) > 1 else '?'}), this 2-core machine. The source is a")
w(f"plain PostgreSQL 15 the script starts itself (its own `initdb`, loopback TCP, no TLS), filled by")
w(f"`pgbench -i -s {scale}` ({dbsize}). Each method copies it into a fresh empty database on the")
w("primary of one pgfleet cluster (one member, TLS, no backups) on a dev fleet, rounds")
w("interleaved (the order turns each round); the copy is checked after each (row count, sum")
w("and hash of `pgbench_accounts`), outside the time measured.")
w("")
w("Reproduce: `bench/import/run.sh` (ROUNDS, CUTOVERS, SCALE, PHASES; writes this file).")
w("")
if samples:
    w(f"The machine is shared: 1-minute load average {min(samples):.2f} to {max(samples):.2f} during the run "
      f"(mean {statistics.mean(samples):.2f}, every 10 s); {' '.join(load.get('start', '').split()[2:])} at the start, "
      f"{' '.join(load.get('end', '').split()[2:])} at the end.")
    w("")

runs = list(csv.DictReader(open(os.path.join(keep, "runs.csv")))) if os.path.exists(os.path.join(keep, "runs.csv")) else []
if runs:
    by = {}
    for r in runs:
        by.setdefault(r["method"], []).append((int(r["round"]), float(r["seconds"])))
    med = {m: statistics.median(s for _, s in v) for m, v in by.items()}
    base = med.get("dump-psql")
    names = {
        "pgfleet": "`pgfleet import NAME --from URL` (--jobs 2)",
        "dump-psql": "`pg_dump \\| psql` (as `fly pg import`)",
        "dump-fc-j2": "`pg_dump -Fc` to a file, then `pg_restore -j 2`",
    }
    w(f"## Offline import, {rounds} round(s)")
    w("")
    w("| method | seconds (median) | pg_dump \\| psql's time / this | every round |")
    w("|---|---|---|---|")
    for m in ("pgfleet", "dump-psql", "dump-fc-j2"):
        if m not in by:
            continue
        every = " ".join(f"{s:.1f}" for _, s in sorted(by[m]))
        ratio = f"{base / med[m]:.2f}x" if base else "-"
        w(f"| {names[m]} | {med[m]:.1f} | {ratio} | {every} |")
    w("")
    if base and "pgfleet" in med:
        sp = base / med["pgfleet"]
        per = []
        for r in sorted({r for r, _ in by["pgfleet"]}):
            a = dict(by["dump-psql"]).get(r)
            b = dict(by["pgfleet"]).get(r)
            if a and b:
                per.append(f"{a / b:.2f}")
        w(f"Aim: `pgfleet import` at least 1.5x as fast as `pg_dump | psql`: "
          f"{'met' if sp >= 1.5 else 'missed'} ({sp:.3f}x, median against median; round by round {' '.join(per)}).")
        w("")
    logs = sorted(glob.glob(os.path.join(keep, "pgfleet-*.log")))
    if logs:
        w("pgfleet's own report of its steps, last round:")
        w("")
        w("```")
        for l in open(logs[-1]).read().splitlines():
            if l.startswith(("dumped", "copied ", "restored", "counted", "built", "analyzed", "imported", "importing")):
                w(l)
        w("```")
        w("")

cut = jsonl("cutover.jsonl")
if cut:
    ok = [c for c in cut if c.get("ok")]
    w(f"## Online import: the cutover's write pause, {len(cut)} cutovers")
    w("")
    w("An app inserts a row every 20 ms, a new connection each time, into the source while")
    w("`pgfleet import NAME --online` follows it; `pgfleet import NAME --cutover --lock-source` runs;")
    w("once it has returned, the app writes through pgfleet's proxy instead. The pause is the longest")
    w("time between two of the app's commits (refused attempts on the read-only source in between);")
    w("the cutover's own figure runs from the source's lock to the sequences' copy. After each, every")
    w("row the source took is in the cluster.")
    w("")
    w("| cutover | app's pause (ms) | pause the cutover reported (ms) | commits into the source | through the proxy after | refused | rows missing |")
    w("|---|---|---|---|---|---|---|")
    for c in cut:
        w(f"| {c['round']}{'' if c.get('ok') else ' (failed: ' + c.get('error', '') + ')'} | {c['pause_ms']:.0f} | {c['reported_ms']:.0f} | "
          f"{c['source_commits']} | {c['target_commits']} | {c['failed']} | {c['missing']} |")
    w("")
    if ok:
        m = statistics.median(c["pause_ms"] for c in ok)
        r = statistics.median(c["reported_ms"] for c in ok)
        w(f"Median: the app's pause {m:.0f} ms, the cutover's own figure {r:.0f} ms. Aim: under 1 s for the app: "
          f"{'met' if m < 1000 else 'missed'}.")
        w("")

mv = jsonl("move.jsonl")
if mv:
    w("## `pgfleet move NAME --primary-region ams` under writers through the proxy")
    w("")
    w("Two writers, each a new connection per INSERT every 20 ms, through the proxy on the old")
    w("primary's host (iad) while the cluster's primary moves to ams (`bench/operations`' writer).")
    w("")
    w("| round | move took (s) | longest write pause (ms) | failed transactions | commits |")
    w("|---|---|---|---|---|")
    for m in mv:
        p = m["proxy"]
        w(f"| {m['round']}{'' if m.get('ok') else ' (failed)'} | {m['total_s']:.1f} | {p['pause_ms']:.0f} | {p['failed']} | {p['commits']} |")
    w("")
    st = lines("move-status.txt")
    if st:
        w("The cluster after the move:")
        w("")
        w("```")
        out.extend(st)
        w("```")
        w("")
print("\n".join(out))
