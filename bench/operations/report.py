"""Writes the table of bench/operations/run.sh's rounds (markdown, on stdout)."""
import datetime
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


def med(rs, k):
    return statistics.median(r[k] for r in rs)


print("# Rolling restart: pgfleet and Patroni, one run")
print()
print(f"One run of `bash bench/operations/run.sh` (ROUNDS={rounds}) on {datetime.date.today()}, on this 2-core")
print("machine; the tools' rounds interleaved, both clusters up for the whole run.")
print()
print("| tool | total time (median) | longest write pause (median) | failed transactions (median) | total, every round | pause, every round | failed, every round |")
print("|---|---|---|---|---|---|---|")
medians = {}
for tool in ("pgfleet", "patroni-rolling", "patroni-all"):
    rs = [r for r in runs if r["tool"] == tool and r["ok"]]
    bad = [r for r in runs if r["tool"] == tool and not r["ok"]]
    if not rs and not bad:
        continue
    if not rs:
        print(f"| {names[tool]} | fails: {bad[0]['error']} | | | | | |")
        continue
    medians[tool] = (med(rs, "total_s"), med(rs, "pause_ms"), med(rs, "failed"))
    totals = " ".join("%.1f" % r["total_s"] for r in rs)
    pauses = " ".join("%.0f" % r["pause_ms"] for r in rs)
    failed = " ".join(str(r["failed"]) for r in rs)
    note = f" ({len(bad)} round(s) failed: {bad[0]['error']})" if bad else ""
    print(f"| {names[tool]} | {medians[tool][0]:.1f} s | {medians[tool][1]:.0f} ms | {medians[tool][2]:.0f} | "
          f"{totals} | {pauses} | {failed}{note} |")
print()
if "pgfleet" in medians:
    for tool in ("patroni-rolling", "patroni-all"):
        if tool in medians:
            p, q = medians["pgfleet"], medians[tool]
            print(f"- pgfleet / {tool}: total time {p[0] / q[0]:.2f}, longest write pause {p[1] / q[1]:.2f}")
    print()
print("## Every round")
print()
print("| round | tool | total | longest pause | pause began at | failed | commits | load (1 min) | CPU busy | first failure |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    print(f"| {r['round']} | {r['tool']} | {r['total_s']:.1f} s | {r['pause_ms']:.0f} ms | {r['pause_at_s']:.2f} s | {r['failed']} | "
          f"{r['commits']} | {r['load1']:.2f} | {100 * r['cpu_busy']:.0f} % | {(r.get('first_error') or '-').replace('|', '/')[:120]} |")
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
