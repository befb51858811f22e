"""Writes bench/results/proxy.md from bench/proxy/run.sh's measurements."""
import csv
import statistics
import sys
import datetime

runs, pause_file, rounds, t_select, t_connect = sys.argv[1:6]
rows = list(csv.DictReader(open(runs)))
pause = {}
for line in open(pause_file):
    k, _, v = line.strip().partition(" ")
    pause[k] = v

names = {
    "direct": "direct to Postgres",
    "pgfleet": "pgfleet proxy",
    "haproxy": "HAProxy 2.6, tcp mode",
    "pgbouncer": "PgBouncer 1.18, session pooling",
    "pooled": "pgfleet pooled port, transaction pooling",
    "pgbouncer-tx": "PgBouncer 1.18, transaction pooling",
}
print("# Routing proxy overhead, beside HAProxy and PgBouncer")
print()
print(f"One run of `bench/proxy/run.sh` on {datetime.date.today()}, on this 2-core machine: client,")
print("proxy and Postgres share the cores, so every proxy costs throughput; compare ratios")
print(f"within the run. `pgbench -n -S -c 8 -j 2` on scale 10, {rounds} interleaved rounds")
print(f"({t_select} s each for `-S`, {t_connect} s for `-S -C`, a new connection per transaction),")
print("medians. TLS from the client on every path: pgfleet and HAProxy pass it through,")
print("PgBouncer ends it and opens its own TLS connections to Postgres. The transaction")
print("poolers (pgfleet's pooled port, PgBouncer in transaction pooling) end TLS and check a")
print("SCRAM login for every client connection, and keep their server connections open.")
print()
print("CPU per transaction is the proxy process's user+system time over the run divided by")
print("the transactions. pgfleet's proxy runs inside the agent, so its figure also holds")
print("the agent's own work (etcd, supervision), which goes on without clients too: the")
print("last column takes off what the agent used in an idle stretch before the test")
print("(`IDLE` seconds, default 10), in proportion to the run's length.")
print()
for test, title in (("select", "`pgbench -S`"), ("connect", "`pgbench -S -C`"), ("prepared", "`pgbench -S -M prepared`")):
    if not any(r["test"] == test for r in rows):
        continue
    print(f"## {title}")
    print()
    idle = [r for r in rows if r["test"] == test and r["target"] == "agent-idle"]
    rate = float(idle[0]["proxy_cpu_s"]) / float(idle[0]["wall_s"]) if idle and idle[0].get("wall_s") else None
    print("| path | TPS (median) | ratio to direct | latency ms (median) | CPU µs per transaction | TPS, every round | CPU µs per transaction, less the agent's idle work |")
    print("|---|---|---|---|---|---|---|")
    direct = None
    for t in ("direct", "pgfleet", "haproxy", "pgbouncer", "pooled", "pgbouncer-tx"):
        failed = [r for r in rows if r["test"] == test and r["target"] == t and not r["tps"]]
        rs = [r for r in rows if r["test"] == test and r["target"] == t and r["tps"]]
        if failed and not rs:
            print(f"| {names[t]} | fails: {failed[0].get('error') or 'no result'} | | | | {len(failed)} of {len(failed)} rounds failed | |")
            continue
        if not rs:
            continue
        tps = statistics.median(float(r["tps"]) for r in rs)
        lat = statistics.median(float(r["latency_ms"]) for r in rs)
        net = "-"
        if t == "direct":
            direct = tps
            cpu = "-"
        else:
            per = [float(r["proxy_cpu_s"]) / float(r["transactions"]) * 1e6 for r in rs if r["transactions"]]
            cpu = f"{statistics.median(per):.1f}"
            if t in ("pgfleet", "pooled") and rate is not None and all(r.get("wall_s") for r in rs):
                less = [(float(r["proxy_cpu_s"]) - rate * float(r["wall_s"])) / float(r["transactions"]) * 1e6 for r in rs if r["transactions"]]
                net = f"{statistics.median(less):.1f}"
        every = " ".join(f"{float(r['tps']):.0f}" for r in rs)
        print(f"| {names[t]} | {tps:.0f} | {tps / direct:.2f} | {lat:.3f} | {cpu} | {every} | {net} |")
    print()
vals = [float(v) for v in pause.get("pause_ms", "").split()]
if vals:
    print("## Switchover seen through the proxy")
    print()
    print(f"A writer opens a new connection through the proxy for every INSERT, every 10 ms;")
    print(f"{len(vals)} switchovers. The pause is the longest gap between two successful commits")
    print("around each switchover.")
    print()
    print("| switchovers | pause median | min | max | failed transactions |")
    print("|---|---|---|---|---|")
    print(f"| {len(vals)} | {statistics.median(vals):.0f} ms | {min(vals):.0f} ms | {max(vals):.0f} ms | {pause.get('failed', '?')} |")
