#!/usr/bin/env python3
"""Turns sample.py's JSON into bench/results/agent.md's table."""
import json
import sys


def mb(b):
    return f"{b / (1 << 20):.1f}"


def main():
    data = json.load(open(sys.argv[1]))
    label, clusters = sys.argv[2], sys.argv[3]
    mins = data["seconds"] / 60
    print(f"# Idle cost of an agent ({label})\n")
    print(f"`bash bench/agent/run.sh`: a dev fleet of five hosts (iad:3,ams,syd; the three iad")
    print(f"hosts are store voters), {clusters} clusters of a primary and a standby in iad and a")
    print(f"replica in ams, no client traffic, measured for {mins:.1f} minutes after the fleet")
    print("settled. CPU is the agent process's user+system time over the window, as a share")
    print("of one core (postgres is not counted); RSS is its resident memory, sampled every")
    print("10 s. Aim: under 1 % of a core and under 40 MB, with no growth.\n")
    print("| agent | CPU, % of one core | RSS first (MB) | RSS last (MB) | RSS max (MB) |")
    print("|---|---|---|---|---|")
    for name, a in sorted(data["agents"].items()):
        r = a["rss"]
        print(f"| {name} | {a['cpu_pct']:.2f} | {mb(r[0])} | {mb(r[-1])} | {mb(max(r))} |")


if __name__ == "__main__":
    main()
