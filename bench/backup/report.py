"""Writes bench/results/backup.md from bench/backup/run.sh's measurements."""
import csv
import datetime
import statistics
import sys

runs, rpo_file, scale, dbsize, rounds = sys.argv[1:6]
rows = list(csv.DictReader(open(runs)))
rpo = [float(x) for x in open(rpo_file).read().strip().split(",", 1)[1].split()]


def med(op, tool, field="seconds"):
    vs = [float(r[field]) for r in rows if r["op"] == op and r["tool"] == tool and r[field]]
    return statistics.median(vs) if vs else None, vs


print("# Backups beside pgBackRest")
print()
print(f"One run of `bench/backup/run.sh` on {datetime.date.today()}, this 2-core machine, one")
print(f"PostgreSQL 15 filled by `pgbench -i -s {scale}` ({dbsize}), {rounds} interleaved rounds,")
print("medians. Both tools compress with zstd level 3 into a local directory. pgfleet's")
print("backup is what its agent runs: `pg_basebackup -Ft -X none` streamed through zstd into")
print("the store (one stream, like `process-max=1`); its restore fetches, checks and")
print("extracts the tar. pgBackRest 2.45 (Debian), full backups, `process-max` 1 and 2.")
print()
print("| | seconds (median) | ratio to pgfleet | stored | every round |")
print("|---|---|---|---|---|")
for op, title in (("backup", "full backup"), ("restore", "restore")):
    base, _ = med(op, "pgfleet")
    for tool in ("pgfleet", "pgbackrest-pm1", "pgbackrest-pm2"):
        m, vs = med(op, tool)
        if m is None:
            continue
        st, _ = med(op, tool, "stored_bytes") if op == "backup" else (None, None)
        stored = f"{st / 2**20:.0f} MB" if st else "-"
        print(f"| {title}, {tool} | {m:.1f} | {m / base:.2f} | {stored} | {' '.join(f'{v:.1f}' for v in vs)} |")
print()
print("A ratio above 1 means pgBackRest took longer than pgfleet.")
print()
print("## WAL archiving, one process per segment (as `archive_command` runs it)")
print()
print("| tool | segments | seconds | per segment |")
print("|---|---|---|---|")
for tool, cmd in (("pgfleet", "pgfleet wal-push"), ("pgbackrest", "pgbackrest archive-push")):
    r = [x for x in rows if x["op"] == "wal-push" and x["tool"] == tool][0]
    n, s = int(r["stored_bytes"]), float(r["seconds"])
    print(f"| `{cmd}` | {n} | {s:.1f} | {s / n * 1000:.0f} ms |")
print()
print("## RPO bound")
print()
print("With `archive_timeout = 5s` (pgfleet's default), the time from a commit on a quiet")
print("database until the WAL segment holding it is in the store, 5 commits:")
print(f"median {statistics.median(rpo):.1f} s, max {max(rpo):.1f} s ({', '.join(f'{x:.1f}' for x in rpo)} s).")
print("A region lost with its primary takes at most that much of the acknowledged commits")
print("with it from the archive's point of view; standbys streaming in another region hold more.")
