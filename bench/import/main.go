// Command import measures the write pause an app sees when an online
// import is cut over. One writer inserts a row into ticks every few
// milliseconds, a new connection each time, into the source; the cutover
// command runs (`pgfleet import NAME --cutover --lock-source`, which makes
// the source read-only); once it has finished, the writer writes through
// the target URL (pgfleet's proxy) instead, as an app whose configuration
// is switched at the cutover. The pause is the longest time between two
// successive commits; afterwards the target must hold every row the
// source took and every row written to it (none lost, none twice). One
// JSON line reports the round. bench/import/run.sh runs it:
//
//	import -source URL -target URL -round 1 -out cutover.jsonl -- pgfleet import live --cutover --lock-source --from URL
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

type options struct {
	source, target, out string
	round               int
	every, settle       time.Duration
	command             []string
}

func main() {
	var o options
	flag.StringVar(&o.source, "source", "", "URL of the source database")
	flag.StringVar(&o.target, "target", "", "URL of the imported database through pgfleet's proxy")
	flag.StringVar(&o.out, "out", "", "JSON lines file the round's result is appended to")
	flag.IntVar(&o.round, "round", 0, "round number, for the report")
	flag.DurationVar(&o.every, "every", 20*time.Millisecond, "the writer starts a transaction this often (or as soon as the last ends)")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "writing before the command starts and after it ends")
	flag.Parse()
	o.command = flag.Args()
	if o.source == "" || o.target == "" || o.out == "" || len(o.command) == 0 {
		fmt.Fprintln(os.Stderr, "usage: import -source URL -target URL -round N -out FILE -- command args...")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/import:", err)
		os.Exit(1)
	}
}

// result is what one round reports.
type result struct {
	Round         int     `json:"round"`
	OK            bool    `json:"ok"`
	Error         string  `json:"error,omitempty"`
	TotalS        float64 `json:"total_s"`        // the cutover command's run time
	PauseMS       float64 `json:"pause_ms"`       // longest gap between two commits, as the app saw it
	ReportedMS    float64 `json:"reported_ms"`    // the pause the cutover printed
	SourceCommits int     `json:"source_commits"` // rows the writer committed into the source
	TargetCommits int     `json:"target_commits"` // rows it committed through the proxy afterwards
	Failed        int     `json:"failed"`         // attempts refused (the source read-only, or ended)
	Missing       int64   `json:"missing"`        // rows of the source the target lacks (want 0)
	Line          string  `json:"line"`           // the cutover's own summary
	Load1         float64 `json:"load1"`
}

func run(o options) error {
	ctx := context.Background()
	var switched atomic.Bool
	var mu sync.Mutex
	var commits []time.Time
	var srcN, dstN, failed int
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(o.every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			onTarget := switched.Load()
			url := o.source
			if onTarget {
				url = o.target
			}
			err := insert(url)
			mu.Lock()
			switch {
			case err != nil:
				failed++
			case onTarget:
				dstN++
				commits = append(commits, time.Now())
			default:
				srcN++
				commits = append(commits, time.Now())
			}
			mu.Unlock()
		}
	}()

	time.Sleep(o.settle)
	res := result{Round: o.round}
	t0 := time.Now()
	cmd := exec.Command(o.command[0], o.command[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		close(stop)
		<-done
		return fmt.Errorf("start %s: %w", o.command[0], err)
	}
	linesDone := make(chan struct{})
	go func() {
		defer close(linesDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintf(os.Stderr, "  %6.2fs %s\n", time.Since(t0).Seconds(), sc.Text())
			if strings.HasPrefix(sc.Text(), "cutover done") {
				res.Line = sc.Text()
			}
		}
	}()
	err := cmd.Wait()
	switched.Store(true)
	pw.Close()
	<-linesDone
	res.TotalS = round3(time.Since(t0).Seconds())
	res.OK = err == nil
	if err != nil {
		res.Error = err.Error()
	}
	time.Sleep(o.settle)
	close(stop)
	<-done

	var longest time.Duration
	for i := 1; i < len(commits); i++ {
		if d := commits[i].Sub(commits[i-1]); d > longest {
			longest = d
		}
	}
	res.PauseMS = round3(float64(longest.Microseconds()) / 1000)
	res.SourceCommits, res.TargetCommits, res.Failed = srcN, dstN, failed
	if m := reported.FindStringSubmatch(res.Line); m != nil {
		if d, err := time.ParseDuration(m[1]); err == nil {
			res.ReportedMS = round3(float64(d.Microseconds()) / 1000)
		}
	}
	if res.OK {
		if res.Missing, err = missing(ctx, o); err != nil {
			res.OK, res.Error = false, err.Error()
		}
	}
	res.Load1 = load1()
	fmt.Fprintf(os.Stderr, "cutover round %d: app's pause %.0f ms (the cutover reported %.0f ms), %d commits into the source, %d through the proxy, %d refused, %d rows missing; load %.2f\n",
		o.round, res.PauseMS, res.ReportedMS, srcN, dstN, failed, res.Missing, res.Load1)

	f, err := os.OpenFile(o.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := json.NewEncoder(f).Encode(res); err != nil {
		return err
	}
	if !res.OK {
		return fmt.Errorf("round %d: %s", o.round, res.Error)
	}
	return nil
}

var reported = regexp.MustCompile(`writes were paused for ([0-9.]+[a-zµ]+)`)

// missing counts the source's rows the target lacks, and fails when the
// target holds rows that are neither the source's nor the writer's since.
func missing(ctx context.Context, o options) (int64, error) {
	src, err := pgx.Connect(ctx, o.source)
	if err != nil {
		return 0, err
	}
	defer src.Close(ctx)
	dst, err := pgx.Connect(ctx, o.target)
	if err != nil {
		return 0, err
	}
	defer dst.Close(ctx)
	var srcMax int64
	var srcCount int64
	if err := src.QueryRow(ctx, "SELECT count(*), coalesce(max(id), 0) FROM ticks").Scan(&srcCount, &srcMax); err != nil {
		return 0, err
	}
	var dstCount int64
	if err := dst.QueryRow(ctx, "SELECT count(*) FROM ticks WHERE id <= $1", srcMax).Scan(&dstCount); err != nil {
		return 0, err
	}
	if dstCount > srcCount {
		return 0, fmt.Errorf("the target holds %d rows up to id %d, the source %d", dstCount, srcMax, srcCount)
	}
	return srcCount - dstCount, nil
}

func insert(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "INSERT INTO ticks DEFAULT VALUES")
	return err
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return v
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }
