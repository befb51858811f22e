package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

type summary struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

func (s *summary) String() string {
	if s == nil || s.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f s (%.2f-%.2f, n=%d)", s.Median, s.Min, s.Max, s.N)
}

func summarize(vals []float64) *summary {
	if len(vals) == 0 {
		return nil
	}
	sort.Float64s(vals)
	med := vals[len(vals)/2]
	if len(vals)%2 == 0 {
		med = (vals[len(vals)/2-1] + vals[len(vals)/2]) / 2
	}
	return &summary{N: len(vals), Min: vals[0], Median: med, Max: vals[len(vals)-1]}
}

func seconds(ss []sample, gap bool) *summary {
	var v []float64
	for _, s := range ss {
		if gap {
			v = append(v, s.WriteGap)
		} else {
			v = append(v, s.Seconds)
		}
	}
	return summarize(v)
}

func lost(ss []sample) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, fmt.Sprint(s.Lost))
	}
	return strings.Join(parts, " ")
}

// patroni is the part of the peer harness's JSON the report uses.
type patroni struct {
	Mode              string   `json:"mode"`
	TTL               int      `json:"ttl"`
	LoopWait          int      `json:"loop_wait"`
	RetryTimeout      int      `json:"retry_timeout"`
	Failover          *summary `json:"failover_summary"`
	Switchover        *summary `json:"switchover_summary"`
	SwitchoverGap     *summary `json:"switchover_gap_summary"`
	FailoverLostRows  []int    `json:"failover_lost_rows"`
	SwitchoverLostRow []int    `json:"switchover_lost_rows"`
}

func render(files []string, peersDir string) error {
	var rs []result
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r result
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		rs = append(rs, r)
	}
	var ps []patroni
	for _, mode := range []string{"default", "aggressive"} {
		b, err := os.ReadFile(filepath.Join(peersDir, "patroni-"+mode+".json"))
		if err != nil {
			continue
		}
		var p patroni
		if err := json.Unmarshal(b, &p); err != nil {
			return err
		}
		p.Mode = mode
		ps = append(ps, p)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Failover: pgfleet and Patroni, one run\n\n")
	fmt.Fprintf(&b, "Measured %s on one 2-core machine, every member on loopback, by `bash bench/failover/run.sh`.\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "Three members (primary + two standbys). Time from the fault to the first committed INSERT on the new primary; a client inserts every 50 ms into whichever member takes the write. Host loss = kill -9 of the primary's agent (Patroni) and postmaster; crash = kill -9 of the postmaster only; switchover = `pgfleet switchover` / `patronictl switchover --force`, and the write gap is the time between the last commit on the old primary and the first on the new one. Replication is asynchronous in both, except the pgfleet row marked sync on (host loss only; every acknowledged row must survive).\n\n")
	fmt.Fprintf(&b, "| system | settings | host loss | postgres crash | switchover: command → first write | switchover write gap | acked rows lost (host loss runs) |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		mode := ""
		if r.Sync != "" && r.Sync != "off" {
			mode = ", sync " + r.Sync
		}
		fmt.Fprintf(&b, "| pgfleet | lease TTL %d s%s | %s | %s | %s | %s | %s |\n", r.TTL, mode, seconds(r.HostLoss, false), seconds(r.Crash, false), seconds(r.Switchover, false), seconds(r.Switchover, true), lost(r.HostLoss))
	}
	for _, p := range ps {
		ls := make([]string, len(p.FailoverLostRows))
		for i, n := range p.FailoverLostRows {
			ls[i] = fmt.Sprint(n)
		}
		fmt.Fprintf(&b, "| Patroni 3.0 | %s: ttl %d, loop_wait %d, retry_timeout %d | %s | (not measured) | %s | %s | %s |\n", p.Mode, p.TTL, p.LoopWait, p.RetryTimeout, p.Failover, p.Switchover, p.SwitchoverGap, strings.Join(ls, " "))
	}
	if len(rs) > 0 && len(ps) > 0 {
		fmt.Fprintf(&b, "\nRatios of medians, pgfleet / Patroni (lower is better):\n\n")
		for _, r := range rs {
			if r.Sync != "" && r.Sync != "off" {
				continue
			}
			for _, p := range ps {
				hl, sw, gap := seconds(r.HostLoss, false), seconds(r.Switchover, false), seconds(r.Switchover, true)
				if hl == nil || p.Failover == nil {
					continue
				}
				fmt.Fprintf(&b, "- TTL %d s vs Patroni %s: host loss %.2f", r.TTL, p.Mode, hl.Median/p.Failover.Median)
				if sw != nil && p.Switchover != nil {
					fmt.Fprintf(&b, ", switchover %.2f", sw.Median/p.Switchover.Median)
				}
				if gap != nil && p.SwitchoverGap != nil {
					fmt.Fprintf(&b, ", switchover write gap %.2f", gap.Median/p.SwitchoverGap.Median)
				}
				fmt.Fprintln(&b)
			}
		}
	}
	if err := os.MkdirAll("bench/results", 0o755); err != nil {
		return err
	}
	return os.WriteFile("bench/results/failover.md", []byte(b.String()), 0o644)
}
