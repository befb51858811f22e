// Command operations measures what writing clients see while a command
// restarts a cluster. Writers open a new connection for every INSERT, on
// two paths at once: through a proxy (pgfleet's, or HAProxy in front of
// Patroni) and straight to the members with a multi-host URL that asks
// for a read-write server (libpq's target_session_attrs, which pgx
// follows). The command runs, and one JSON line reports how long it took
// and, per path, the longest gap between two successful commits, the
// failed transactions, and the machine's load meanwhile.
// bench/operations/run.sh runs it once per round and tool:
//
//	operations -url URL -direct URL -tool pgfleet -round 1 -out runs.jsonl -- pgfleet restart bench
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
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	var o options
	flag.StringVar(&o.url, "url", "", "URL through the proxy")
	flag.StringVar(&o.direct, "direct", "", "multi-host URL of the members with target_session_attrs=read-write (optional)")
	flag.StringVar(&o.tool, "tool", "", "name of what is measured, for the report")
	flag.IntVar(&o.round, "round", 0, "round number, for the report")
	flag.StringVar(&o.out, "out", "", "JSON lines file the round's result is appended to")
	flag.IntVar(&o.writers, "writers", 2, "concurrent writers on each path")
	flag.DurationVar(&o.every, "every", 20*time.Millisecond, "each writer starts a transaction this often (or as soon as the last ends)")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "writing before the command starts and after it ends, inside the window measured")
	flag.Parse()
	o.command = flag.Args()
	if o.url == "" || o.out == "" || len(o.command) == 0 {
		fmt.Fprintln(os.Stderr, "usage: operations -url URL [-direct URL] -tool NAME -round N -out FILE -- command args...")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/operations:", err)
		os.Exit(1)
	}
}

type options struct {
	url, direct, tool, out string
	round, writers         int
	every, settle          time.Duration
	command                []string
}

// attempt is one transaction a writer tried.
type attempt struct {
	start, end time.Time
	err        error
}

// step is a line the command printed, with when it was read.
type step struct {
	At   float64 `json:"at_s"` // seconds since the command started
	Line string  `json:"line"`
}

// result is what one round reports.
type result struct {
	Tool    string  `json:"tool"`
	Round   int     `json:"round"`
	OK      bool    `json:"ok"`
	Error   string  `json:"error,omitempty"`
	Started string  `json:"started"` // when the command started, UTC, to read beside logs
	TotalS  float64 `json:"total_s"`
	Proxy   writes  `json:"proxy"`
	Direct  *writes `json:"direct,omitempty"`
	Load1   float64 `json:"load1"`    // 1-minute load average at the end of the window
	CPUBusy float64 `json:"cpu_busy"` // share of both cores busy over the window
	Steps   []step  `json:"steps"`
}

// writes is what the writers of one path saw.
type writes struct {
	PauseMS    float64 `json:"pause_ms"`
	PauseAtS   float64 `json:"pause_at_s"` // when the longest pause began, since the command started
	Failed     int     `json:"failed"`
	Commits    int     `json:"commits"`
	FirstError string  `json:"first_error,omitempty"`
	// Errors counts the failed transactions by the end of their error.
	Errors map[string]int `json:"errors,omitempty"`
}

// path runs writers against one URL until stop closes.
type path struct {
	url      string
	mu       sync.Mutex
	attempts []attempt
}

func (p *path) write(o options, stop <-chan struct{}, wg *sync.WaitGroup) {
	for range o.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(o.every)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				a := attempt{start: time.Now()}
				a.err = insert(p.url)
				a.end = time.Now()
				p.mu.Lock()
				p.attempts = append(p.attempts, a)
				p.mu.Unlock()
			}
		}()
	}
}

// measure returns the path's longest pause, the longest time between the
// ends of two successive successful commits of any of its writers over
// the whole window (a window that ends without a commit after the last
// one counts up to its end), and its failures; t0 is when the command
// started.
func (p *path) measure(t0 time.Time) writes {
	var w writes
	as := p.attempts
	if len(as) == 0 {
		return w
	}
	sort.Slice(as, func(i, j int) bool { return as[i].end.Before(as[j].end) })
	last := as[0].start
	var longest time.Duration
	var longestFrom time.Time
	for _, a := range as {
		if a.err != nil {
			w.Failed++
			if w.FirstError == "" {
				w.FirstError = fmt.Sprintf("at %.2fs: %v", a.start.Sub(t0).Seconds(), a.err)
			}
			if w.Errors == nil {
				w.Errors = map[string]int{}
			}
			w.Errors[errorKind(a.err)]++
			continue
		}
		w.Commits++
		if d := a.end.Sub(last); d > longest {
			longest, longestFrom = d, last
		}
		last = a.end
	}
	if d := as[len(as)-1].end.Sub(last); d > longest {
		longest, longestFrom = d, last
	}
	w.PauseMS = round3(float64(longest.Microseconds()) / 1000)
	w.PauseAtS = round3(longestFrom.Sub(t0).Seconds())
	return w
}

func run(o options) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, o.url)
	if err != nil {
		return fmt.Errorf("connect before the round: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS ops (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	conn.Close(ctx)

	busy0, total0 := cpuTicks()
	paths := []*path{{url: o.url}}
	if o.direct != "" {
		paths = append(paths, &path{url: o.direct})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range paths {
		p.write(o, stop, &wg)
	}

	time.Sleep(o.settle)
	res := result{Tool: o.tool, Round: o.round}
	t0 := time.Now()
	res.Started = t0.UTC().Format("15:04:05.000")
	cmd := exec.Command(o.command[0], o.command[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		close(stop)
		wg.Wait()
		return fmt.Errorf("start %s: %w", o.command[0], err)
	}
	linesDone := make(chan struct{})
	go func() {
		defer close(linesDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s := step{At: round3(time.Since(t0).Seconds()), Line: sc.Text()}
			res.Steps = append(res.Steps, s)
			fmt.Fprintf(os.Stderr, "  %6.2fs %s\n", s.At, s.Line)
		}
	}()
	err = cmd.Wait()
	pw.Close()
	<-linesDone
	res.TotalS = round3(time.Since(t0).Seconds())
	res.OK = err == nil
	if err != nil {
		res.Error = err.Error()
	}
	time.Sleep(o.settle)
	close(stop)
	wg.Wait()
	busy1, total1 := cpuTicks()
	if total1 > total0 {
		res.CPUBusy = round3(float64(busy1-busy0) / float64(total1-total0))
	}
	res.Load1 = load1()
	res.Proxy = paths[0].measure(t0)
	if len(paths) > 1 {
		d := paths[1].measure(t0)
		res.Direct = &d
	}
	fmt.Fprintf(os.Stderr, "%s round %d: %.1f s; through the proxy: longest write pause %.0f ms (from %.2f s), %d failed, %d commits",
		o.tool, o.round, res.TotalS, res.Proxy.PauseMS, res.Proxy.PauseAtS, res.Proxy.Failed, res.Proxy.Commits)
	if res.Direct != nil {
		fmt.Fprintf(os.Stderr, "; multi-host: %.0f ms (from %.2f s), %d failed, %d commits",
			res.Direct.PauseMS, res.Direct.PauseAtS, res.Direct.Failed, res.Direct.Commits)
	}
	fmt.Fprintf(os.Stderr, "; load %.2f, cpu busy %.0f%%\n", res.Load1, 100*res.CPUBusy)

	f, err := os.OpenFile(o.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := json.NewEncoder(f).Encode(res); err != nil {
		return err
	}
	if !res.OK {
		return fmt.Errorf("%s: %s", strings.Join(o.command, " "), res.Error)
	}
	return nil
}

func insert(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "INSERT INTO ops DEFAULT VALUES")
	return err
}

// errorKind returns what an error says after its connection details: the
// server's message or the dial error, for each host a multi-host URL
// tried, joined with " / ".
func errorKind(err error) string {
	var kinds []string
	for _, s := range strings.Split(err.Error(), "\n\t") {
		if strings.HasPrefix(s, "failed to connect to") && strings.HasSuffix(s, ":") {
			continue // the head of a multi-host error
		}
		for _, sep := range []string{"server error: ", "dial error: ", "): "} {
			if i := strings.LastIndex(s, sep); i >= 0 {
				s = s[i+len(sep):]
				break
			}
		}
		if s != "" && !slices.Contains(kinds, s) {
			kinds = append(kinds, s)
		}
	}
	return strings.Join(kinds, " / ")
}

// cpuTicks returns the busy and total ticks of every CPU from /proc/stat.
func cpuTicks() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
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
