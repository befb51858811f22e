// Command proxy measures the pause a client sees through pgfleet's routing
// proxy while the cluster switches over: a writer opens a new connection
// per transaction every 10 ms, and for each of n switchovers the longest
// wait for a commit around it is recorded, along with failed transactions.
// bench/proxy/run.sh runs it; it prints "pause_ms <values>" and
// "failed <count>".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	url := flag.String("url", "", "URL of the cluster's primary port through the proxy")
	pgfleet := flag.String("pgfleet", "pgfleet", "the pgfleet binary")
	cluster := flag.String("cluster", "", "cluster to switch over")
	n := flag.Int("n", 10, "switchovers")
	flag.Parse()
	if err := run(*url, *pgfleet, *cluster, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy:", err)
		os.Exit(1)
	}
}

// commit is one transaction the writer attempted.
type commit struct {
	start, end time.Time
	err        error
}

func run(url, pgfleet, cluster string, n int) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS pause (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		return err
	}
	conn.Close(ctx)

	var mu sync.Mutex
	var commits []commit
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			c := commit{start: time.Now()}
			c.err = insert(url)
			c.end = time.Now()
			mu.Lock()
			commits = append(commits, c)
			mu.Unlock()
		}
	}()
	var pauses []float64
	failed := 0
	for i := range n {
		time.Sleep(2 * time.Second) // let the new standby settle between switchovers
		mu.Lock()
		from := len(commits)
		mu.Unlock()
		var out []byte
		for try := 0; ; try++ {
			out, err = exec.Command(pgfleet, "switchover", cluster).CombinedOutput()
			if err == nil || try == 20 || !strings.Contains(string(out), "retry") {
				break
			}
			time.Sleep(time.Second) // a member still settling: the API says to retry
		}
		if err != nil {
			close(stop)
			<-done
			return fmt.Errorf("switchover %d: %v: %s", i+1, err, out)
		}
		time.Sleep(2 * time.Second) // commits after the switchover
		mu.Lock()
		window := append([]commit(nil), commits[from:]...)
		mu.Unlock()
		// The pause is the longest gap between the ends of two successive
		// successful commits.
		var longest time.Duration
		var last time.Time
		for _, c := range window {
			if c.err != nil {
				failed++
				fmt.Fprintf(os.Stderr, "  failed at %s: %v\n", c.start.Format("15:04:05.000"), c.err)
				continue
			}
			if !last.IsZero() && c.end.Sub(last) > longest {
				longest = c.end.Sub(last)
			}
			last = c.end
		}
		pauses = append(pauses, float64(longest.Microseconds())/1000)
		fmt.Fprintf(os.Stderr, "switchover %d: %s; longest pause %.0f ms\n", i+1, strings.TrimSpace(lastLine(string(out))), pauses[len(pauses)-1])
	}
	close(stop)
	<-done
	sort.Float64s(pauses)
	var vals []string
	for _, p := range pauses {
		vals = append(vals, fmt.Sprintf("%.0f", p))
	}
	fmt.Printf("pause_ms %s\nfailed %d\n", strings.Join(vals, " "), failed)
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
	_, err = conn.Exec(ctx, "INSERT INTO pause DEFAULT VALUES")
	return err
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
