#!/usr/bin/env python3
"""Samples the CPU time and resident memory of pgfleet agents.

usage: sample.py SECONDS EVERY NAME=PID...

Prints one JSON object: per agent, the share of one core it used over the
whole window (utime+stime from /proc/PID/stat), and its resident set size
(VmRSS) at every sample, so growth shows.
"""
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5), counted after the ") " that ends comm.
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    seconds, every = float(sys.argv[1]), float(sys.argv[2])
    agents = dict(a.split("=", 1) for a in sys.argv[3:])
    start = {n: cpu_seconds(p) for n, p in agents.items()}
    t0 = time.monotonic()
    rss = {n: [rss_bytes(p)] for n, p in agents.items()}
    while time.monotonic() - t0 < seconds:
        time.sleep(min(every, max(0.0, seconds - (time.monotonic() - t0))))
        for n, p in agents.items():
            rss[n].append(rss_bytes(p))
    took = time.monotonic() - t0
    out = {}
    for n, p in agents.items():
        used = cpu_seconds(p) - start[n]
        out[n] = {"cpu_pct": 100 * used / took, "rss": rss[n]}
    json.dump({"seconds": took, "agents": out}, sys.stdout)


if __name__ == "__main__":
    main()
