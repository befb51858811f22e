package console_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// TestBenchConsole measures what bench/results/console.md reports: the
// server time of the clusters page with 50 clusters (their specs, members
// and statuses in a real store, read through the API as an agent's
// console does; no postgres, which 50 clusters' worth this machine cannot
// run), and the CPU that five idle consoles add while every member
// republishes its status each second, as supervisors do. It runs with
// PGFLEET_BENCH=1 (bench/console/run.sh).
func TestBenchConsole(t *testing.T) {
	if os.Getenv("PGFLEET_BENCH") == "" {
		t.Skip("a benchmark: PGFLEET_BENCH=1 (bench/console/run.sh)")
	}
	const clusters = 50
	f := newStateFleet(t, clusters)
	// CPU: a minute before any console request (the agent as it runs
	// without the console), then a minute with five consoles open on the
	// clusters page, while all 150 members republish their status every
	// second (unchanged but for its time, as on an idle fleet).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for ctx.Err() == nil {
			for i := range clusters {
				name := fmt.Sprintf("db%02d", i+1)
				f.publish(name, name+"-1", "iad-1", fleet.RolePrimary, 0)
				f.publish(name, name+"-2", "iad-2", fleet.RoleStandby, 0)
				f.publish(name, name+"-3", "ams-1", fleet.RoleReplica, 0)
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	window := time.Minute
	if v := os.Getenv("PGFLEET_BENCH_WINDOW"); v != "" {
		window, _ = time.ParseDuration(v)
	}
	time.Sleep(5 * time.Second) // the writer settles
	base := cpu()
	time.Sleep(window)
	idle := cpu() - base
	b := f.client(t)
	b.signIn(testToken)
	var wg sync.WaitGroup
	sctx, stop := context.WithCancel(ctx)
	events := make([]int, 5)
	for i := range 5 {
		req, _ := http.NewRequestWithContext(sctx, "GET", f.srv.URL+"/live?page=clusters", nil)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			eachLine(resp.Body, func(l string) {
				if strings.HasPrefix(l, "event: ") {
					events[i]++
				}
			})
		}()
	}
	time.Sleep(5 * time.Second) // the streams' first events
	calls := f.apiCalls.Load()
	base = cpu()
	time.Sleep(window)
	open := cpu() - base
	calls = f.apiCalls.Load() - calls
	stop()
	wg.Wait()
	cancel() // the status writer
	fmt.Printf("CPU over %s without consoles: %.2f%% of a core; with 5 idle consoles: %.2f%%; extra: %.2f%% (API calls meanwhile: %d; events sent: %v)\n",
		window, pct(idle, window), pct(open, window), pct(open-idle, window), calls, events)
	u, _ := url.Parse(f.srv.URL)
	var cookie *http.Cookie
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == "pgfleet_session" {
			cookie = c
		}
	}
	handler := f.srv.Config.Handler
	page := func() time.Duration {
		req := httptest.NewRequest("GET", "/clusters", nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		start := time.Now()
		handler.ServeHTTP(rec, req)
		d := time.Since(start)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "db50") {
			t.Fatalf("GET /clusters = %d", rec.Code)
		}
		return d
	}
	report := func(name string, ds []time.Duration) {
		slices.Sort(ds)
		p := func(q float64) time.Duration { return ds[int(q*float64(len(ds)-1))] }
		fmt.Printf("%-44s n=%d  p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms\n", name, len(ds),
			ms(p(0.5)), ms(p(0.99)), ms(ds[len(ds)-1]))
	}
	// The peer: the API's own GET /v1/clusters, what `pgfleet list
	// --json` reads, served in process the same way.
	var apiOnly []time.Duration
	for range 200 {
		req := httptest.NewRequest("GET", "/v1/clusters", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		start := time.Now()
		handler.ServeHTTP(rec, req)
		apiOnly = append(apiOnly, time.Since(start))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET /v1/clusters = %d", rec.Code)
		}
	}
	report("GET /v1/clusters (the API alone, the peer)", apiOnly)
	page() // the first read of the backups fills the cache
	// Every request after a change of one member's lag: the clusters are
	// read through the API again (the backups stay cached).
	var changed []time.Duration
	for i := range 200 {
		f.putStatus(t, "db07", "db07-3", "ams-1", fleet.RoleReplica, int64(i+1)<<10)
		gen := f.apiCalls.Load()
		deadline := time.Now().Add(5 * time.Second)
		for {
			d := page()
			if f.apiCalls.Load() > gen || time.Now().After(deadline) {
				changed = append(changed, d)
				break
			}
		}
	}
	report("clusters page, after a change (API read)", changed)
	var steady []time.Duration
	for range 1000 {
		steady = append(steady, page())
	}
	report("clusters page, no change (shared read)", steady)

}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(cpu, wall time.Duration) float64 { return 100 * float64(cpu) / float64(wall) }

// cpu is the CPU time this process used so far, user and system.
func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
