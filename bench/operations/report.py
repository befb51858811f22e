"""Writes the table of bench/operations/run.sh's rounds (markdown, on stdout)."""
import datetime
import os
import re
import json
import statistics
import sys

runs_file, load_file, rounds = sys.argv[1:4]
runs = [json.loads(line) for line in open(runs_file) if line.strip()]

names = {
    "pgfleet": "pgfleet: `pgfleet restart`",
    "patroni-rolling": "Patroni: `patronictl restart` per member, pgfleet's order, `patronictl switchover` before the leader",
    "patroni-all": "Patroni: `patronictl restart --force` of the whole cluster, as it comes",
}


def kind(err):
    """Returns an error with addresses left out and a multi-host URL's
    answers sorted, so that the same failure counts once."""
    parts = set()
    for part in err.split(" / "):
        part = re.sub(r"(read|write|dial) tcp [0-9.:]+(->[0-9.:]+)?: ", "", part)
        part = re.sub(r"127\.[0-9.]+:[0-9]+", "a member", part)
        part = re.sub(r" \(SQLSTATE [0-9A-Z]+\)", "", part)
        parts.add(part.replace("ValidateConnect failed: read only connection", "a read-only member"))
    return " / ".join(sorted(parts))


def med(vals):
    return statistics.median(vals)


def path(r, p):
    return r.get(p) or {}


print("# Rolling restart: pgfleet and Patroni, one run")
print()
print(f"One run of `bash bench/operations/run.sh` (ROUNDS={rounds}) on {datetime.date.today()}, on this 2-core")
print("machine; the tools' rounds interleaved, both clusters up for the whole run. Pause: the longest time")
print("between two successful commits; failed: transactions that failed (writers retry every 20 ms).")
print()
print("| tool | total time | longest write pause, through the proxy | failed, through the proxy | longest write pause, multi-host URL | failed, multi-host URL |")
print("|---|---|---|---|---|---|")
medians = {}
for tool in ("pgfleet", "patroni-rolling", "patroni-all"):
    rs = [r for r in runs if r["tool"] == tool and r["ok"]]
    bad = [r for r in runs if r["tool"] == tool and not r["ok"]]
    if not rs and not bad:
        continue
    if not rs:
        print(f"| {names[tool]} | fails: {bad[0]['error']} | | | | |")
        continue
    cols = [[r["total_s"] for r in rs]]
    for p in ("proxy", "direct"):
        cols.append([path(r, p).get("pause_ms", 0) for r in rs])
        cols.append([path(r, p).get("failed", 0) for r in rs])
    medians[tool] = [med(c) for c in cols]
    fmt = ["%.1f s", "%.0f ms", "%d", "%.0f ms", "%d"]
    cells = [f"{fmt[i] % medians[tool][i]} ({' '.join((fmt[i].split()[0]) % v for v in c)})" for i, c in enumerate(cols)]
    note = f" ({len(bad)} round(s) failed: {bad[0]['error']})" if bad else ""
    print(f"| {names[tool]}{note} | " + " | ".join(cells) + " |")
print()
print("Medians, and every round in brackets.")
print()
if "pgfleet" in medians:
    for tool in ("patroni-rolling", "patroni-all"):
        if tool in medians:
            p, q = medians["pgfleet"], medians[tool]
            print(f"- pgfleet / {tool}, medians: total time {p[0] / q[0]:.2f}, longest write pause through the proxy "
                  f"{p[1] / q[1]:.2f}, with the multi-host URL {p[3] / q[3]:.2f}")
    print()
print("## Every round")
print()
print("| round | tool | started (UTC) | total | proxy: pause, began at, failed, commits | multi-host: pause, began at, failed, commits | load (1 min) | CPU busy |")
print("|---|---|---|---|---|---|---|---|")
for r in runs:
    cells = []
    for p in ("proxy", "direct"):
        w = path(r, p)
        cells.append(f"{w.get('pause_ms', 0):.0f} ms, {w.get('pause_at_s', 0):.2f} s, {w.get('failed', 0)}, {w.get('commits', 0)}")
    print(f"| {r['round']} | {r['tool']} | {r['started']} | {r['total_s']:.1f} s | {cells[0]} | {cells[1]} | {r['load1']:.2f} | {100 * r['cpu_busy']:.0f} % |")
print()
print("Failed transactions by error, summed over the rounds:")
print()
for tool in ("pgfleet", "patroni-rolling", "patroni-all"):
    for p in ("proxy", "direct"):
        errs = {}
        for r in runs:
            if r["tool"] == tool:
                for k, v in (path(r, p).get("errors") or {}).items():
                    k = kind(k)
                    errs[k] = errs.get(k, 0) + v
        if errs:
            print(f"- {tool}, {'through the proxy' if p == 'proxy' else 'multi-host URL'}: "
                  + "; ".join(f"{v} × `{k}`" for k, v in sorted(errs.items(), key=lambda kv: -kv[1])))
print()
print("## Steps, as the commands printed them (seconds since the command started)")
print()
for r in runs:
    print(f"- round {r['round']}, {r['tool']}: " + "; ".join(f"{s['at_s']:.1f} s {s['line']}" for s in r["steps"]))
print()
print("## Load")
print()
for line in open(load_file):
    print(f"- {line.strip()}")

# The switchovers, step by step, from each tool's own record: pgfleet's
# events, and Patroni's and its postgres' log lines.
events_file, patroni_logs = (sys.argv[4:6] + [None, None])[:2]
if events_file and os.path.exists(events_file):
    print()
    print("## pgfleet's switchovers, from `pgfleet events bench`")
    print()
    print("```")
    for line in open(events_file):
        if any(f"  {k} " in line for k in ("switchover", "election", "elected", "promoted")):
            print(line.rstrip()[:160])
    print("```")
if patroni_logs and os.path.isdir(patroni_logs):
    lines = []
    for name in sorted(os.listdir(patroni_logs)):
        if not name.startswith("n"):
            continue
        for line in open(os.path.join(patroni_logs, name), errors="replace"):
            if len(line) > 23 and line[:4].isdigit():
                lines.append((line[:23].replace(",", "."), name[:-4], line[23:].strip()))
    lines.sort()
    marks = ("received switchover request", "Demoting self", "database system is shut down", "Leader key released",
             "promoted self to leader", "received promote request", "database system is ready to accept connections")
    print()
    print("## Patroni's switchovers, from its logs (member, time, line)")
    print()
    print("```")
    capturing = False
    for t, m, rest in lines:
        if "received switchover request" in rest:
            capturing = True
        if capturing and any(k in rest for k in marks):
            print(f"{m} {t} {rest[:110]}")
            if "ready to accept connections" in rest:
                capturing = False
                print()
    print("```")
