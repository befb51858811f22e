package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// asUser is u with another user and password.
func asUser(t *testing.T, u, user, password string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	p.User = url.UserPassword(user, password)
	q := p.Query()
	q.Set("connect_timeout", "10")
	p.RawQuery = q.Encode()
	return p.String()
}

// poolTimeouts sums pgfleet_pool_timeouts_total of user app over every
// host's /metrics, verified with the CA the pooled URL names.
func poolTimeouts(t *testing.T, c cli, pooled string) float64 {
	t.Helper()
	u, err := url.Parse(pooled)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(u.Query().Get("sslrootcert"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	var hosts []api.HostView
	if err := json.Unmarshal([]byte(c.ok("hosts", "--json")), &hosts); err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, h := range hosts {
		resp, err := client.Get("https://" + h.APIAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "pgfleet_pool_timeouts_total{") && strings.Contains(line, `user="app"`) {
				var v float64
				fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
				sum += v
			}
		}
	}
	return sum
}

// sqlState is err's SQLSTATE, "" when it has none.
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// TestPooledPort: the pooled port of a two-host cluster checks SCRAM
// logins against the cluster's roles, queues clients past the pool size and
// fails them with 53300 past the queue timeout, keeps prepared statements
// (pgx's statement cache, pgbench -M prepared) working whichever server
// connection a transaction lands on, keeps one client's settings from the
// next, and carries idle clients over a switchover to the new primary.
func TestPooledPort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a two-host dev fleet")
	}
	c, dir, netArg := devFleetCLI(t, []string{"iad-1", "iad-2"})
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:2")
	c.ok("create", "db", "--primary-region", "iad", "--ha", "2", "--lease-ttl", "3s", "--pool-size", "3", "--wait")
	ctx := context.Background()
	v := status(t, c, "db")
	if v.PooledProxyPort != v.Port+3 || v.PoolSize != 3 {
		t.Fatalf("status: pooled port %d, pool size %d; want %d and 3", v.PooledProxyPort, v.PoolSize, v.Port+3)
	}
	direct := strings.TrimSpace(c.ok("url", "db", "--member", v.Primary))
	pooled := strings.TrimSpace(c.ok("url", "db", "--pooled"))
	if !strings.Contains(pooled, fmt.Sprintf(":%d", v.Port+3)) || !strings.Contains(pooled, "sslmode=verify-full") {
		t.Fatalf("url --pooled = %s, want the pooled port %d with verify-full", pooled, v.Port+3)
	}
	admin, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE ROLE app LOGIN PASSWORD 'app-secret-1'; CREATE TABLE t (id int PRIMARY KEY, v text); GRANT ALL ON t TO app"); err != nil {
		t.Fatal(err)
	}
	appURL := asUser(t, pooled, "app", "app-secret-1")
	if _, stderr, code := c.run("set", "db", "--pool-size", "0"); code == 0 || !strings.Contains(stderr, "--pool-size 0: give 1 to 1000") {
		t.Errorf("set --pool-size 0: exit %d, %s; want a usage error", code, stderr)
	}
	if _, stderr, code := c.run("url", "db", "--pooled", "--replica"); code == 0 || !strings.Contains(stderr, "--pooled cannot be combined with --replica") {
		t.Errorf("url --pooled --replica: exit %d, %s; want a usage error", code, stderr)
	}

	t.Run("SCRAM logins", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, pooled)
		if err != nil {
			t.Fatalf("the superuser through the pooled port: %v", err)
		}
		conn.Close(ctx)
		conn, err = pgx.Connect(ctx, appURL)
		if err != nil {
			t.Fatalf("app with its password: %v", err)
		}
		var user string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != "app" {
			t.Errorf("current_user = %q (%v), want app: the server connection runs as the client's role", user, err)
		}
		conn.Close(ctx)
		for _, tc := range []struct{ user, password string }{{"app", "wrong"}, {"nobody", "app-secret-1"}} {
			_, err := pgx.Connect(ctx, asUser(t, pooled, tc.user, tc.password))
			want := fmt.Sprintf("password authentication failed for user %q", tc.user)
			if err == nil || sqlState(err) != "28P01" || !strings.Contains(err.Error(), want) {
				t.Errorf("login as %s with a wrong password: %v, want 28P01 %s", tc.user, err, want)
			}
		}
		// libpq's clients (psql) log in too, with channel binding.
		out, err := exec.Command("psql", appURL+"&channel_binding=require", "-Atc", "SELECT 1").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("psql with channel_binding=require: %v: %s", err, out)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, appURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
			done <- err
		}()
		labtest.WaitFor(t, 5*time.Second, "the sleep on the server", func() (bool, string) {
			var n int
			admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND query = 'SELECT pg_sleep(30)' AND state = 'active'").Scan(&n)
			return n == 1, fmt.Sprintf("%d sleeping", n)
		})
		// The client's cancel key is the pooler's; the pooler passes the
		// request to the server running the query.
		if err := conn.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if sqlState(err) != "57014" {
				t.Errorf("a cancelled query: %v, want SQLSTATE 57014", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the query was not cancelled within 10 s")
		}
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Errorf("the connection after a cancel: %v", err)
		}
	})

	t.Run("server connections ended by the server", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, appURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usename = 'app'").Scan(&n); err != nil || n == 0 {
			t.Fatalf("terminate app's server connections: %d, %v", n, err)
		}
		// The idle client's next transactions run on new server connections.
		for i := 0; i < 5; i++ {
			if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatalf("transaction %d after the server ended the pool's connections: %v", i, err)
			}
		}
	})

	t.Run("queue past the pool size", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		pids := sync.Map{}
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(ctx, appURL)
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(ctx)
				var pid int
				if err := conn.QueryRow(ctx, "SELECT pg_backend_pid() FROM pg_sleep(0.3)").Scan(&pid); err != nil {
					errs <- err
					return
				}
				pids.Store(pid, true)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("client past the pool size: %v", err)
		}
		n := 0
		pids.Range(func(any, any) bool { n++; return true })
		if n > 3 {
			t.Errorf("8 clients ran on %d server connections, want at most the pool size 3", n)
		}
	})

	t.Run("full pool past the queue timeout", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(ctx, appURL)
				if err != nil {
					t.Error(err)
					return
				}
				defer conn.Close(ctx)
				if _, err := conn.Exec(ctx, "SELECT pg_sleep(7)"); err != nil {
					t.Error(err)
				}
			}()
		}
		conn, err := pgx.Connect(ctx, appURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		labtest.WaitFor(t, 5*time.Second, "three sleepers on the server", func() (bool, string) {
			var n int
			admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND query LIKE '%pg_sleep(7)%'").Scan(&n)
			return n == 3, fmt.Sprintf("%d sleeping", n)
		})
		start := time.Now()
		_, err = conn.Exec(ctx, "SELECT 1")
		took := time.Since(start)
		if sqlState(err) != "53300" || !strings.Contains(err.Error(), "pgfleet set db --pool-size") || took < 4*time.Second {
			t.Errorf("a transaction on a full pool: %v after %s, want 53300 naming the pool size after the 5 s queue timeout", err, took)
		}
		// /metrics counts it.
		if n := poolTimeouts(t, c, pooled); n < 1 {
			t.Errorf("pgfleet_pool_timeouts_total of app on every host = %v, want at least 1", n)
		}
		// The session goes on once a server is free.
		wg.Wait()
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Errorf("the same client once the pool has room: %v", err)
		}
	})

	t.Run("prepared statements across server connections", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 6; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(ctx, appURL) // pgx caches statements as named ones
				if err != nil {
					t.Error(err)
					return
				}
				defer conn.Close(ctx)
				for j := 0; j < 30; j++ {
					var got int
					if err := conn.QueryRow(ctx, "SELECT $1::int + $2::int", i, j).Scan(&got); err != nil || got != i+j {
						t.Errorf("client %d query %d: %d, %v", i, j, got, err)
						return
					}
					if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ($1, 'x') ON CONFLICT (id) DO UPDATE SET v = excluded.v", i*100+j); err != nil {
						t.Errorf("client %d insert %d: %v", i, j, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		bench := exec.Command("pgbench", "-i", "-s", "1", direct)
		if out, err := bench.CombinedOutput(); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		admin.Exec(ctx, "GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
		// Twice the pool size of clients, each transaction one statement;
		// then TPC-B's transactions of several statements, as many clients
		// as servers: pgbench waits for each prepare in its one thread, so
		// more clients than servers would wait on each other's servers.
		for _, args := range [][]string{{"-S", "-c", "6"}, {"-c", "3"}} {
			args = append([]string{"-M", "prepared", "-T", "3", "-n"}, append(args, appURL)...)
			out, err := exec.Command("pgbench", args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "number of failed transactions: 0") {
				t.Errorf("pgbench %s through the pooled port: %v\n%s", strings.Join(args[:len(args)-1], " "), err, out)
			}
		}
	})

	t.Run("settings do not leak between clients", func(t *testing.T) {
		a, err := pgx.Connect(ctx, appURL)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Exec(ctx, "BEGIN; SET statement_timeout = '4321ms'; CREATE TEMP TABLE mine (x int); COMMIT"); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := a.QueryRow(ctx, "SHOW statement_timeout").Scan(&got); err != nil {
			t.Fatal(err)
		}
		a.Close(ctx)
		for i := 0; i < 5; i++ {
			b, err := pgx.Connect(ctx, appURL)
			if err != nil {
				t.Fatal(err)
			}
			var temp bool
			if err := b.QueryRow(ctx, "SELECT current_setting('statement_timeout'), to_regclass('pg_temp.mine') IS NOT NULL").Scan(&got, &temp); err != nil {
				t.Fatal(err)
			}
			b.Close(ctx)
			if got == "4321ms" || temp {
				t.Fatalf("another client sees statement_timeout %s and the temporary table: %v; the session was not reset", got, temp)
			}
		}
	})

	t.Run("idle clients follow a switchover", func(t *testing.T) {
		old := status(t, c, "db").Primary
		labtest.WaitFor(t, 30*time.Second, "the standby streaming", func() (bool, string) {
			v := status(t, c, "db")
			var s []string
			ok := true
			for _, m := range v.Members {
				s = append(s, m.ID+" "+string(m.State))
				ok = ok && (m.ID == v.Primary || m.State == "streaming")
			}
			return ok, strings.Join(s, ", ")
		})
		var clients []*pgx.Conn
		for i := 0; i < 3; i++ {
			conn, err := pgx.Connect(ctx, appURL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var member string
			if err := conn.QueryRow(ctx, "SELECT current_setting('cluster_name') WHERE $1::int > 0", 1).Scan(&member); err != nil || member != old {
				t.Fatalf("before the switchover: %q, %v", member, err)
			}
			clients = append(clients, conn)
		}
		// One client is inside a transaction when the switchover comes.
		inTx, err := pgx.Connect(ctx, appURL)
		if err != nil {
			t.Fatal(err)
		}
		defer inTx.Close(ctx)
		if _, err := inTx.Exec(ctx, "BEGIN; INSERT INTO t VALUES (-1, 'in flight')"); err != nil {
			t.Fatal(err)
		}
		c.ok("switchover", "db")
		now := status(t, c, "db").Primary
		if _, err := inTx.Exec(ctx, "COMMIT"); err == nil {
			t.Error("COMMIT of a transaction open on the old primary through the switchover succeeded, want an error")
		}
		if now == old {
			t.Fatalf("the switchover left %s the primary", old)
		}
		for i, conn := range clients {
			var member string
			var rec bool
			err := conn.QueryRow(ctx, "SELECT current_setting('cluster_name'), pg_is_in_recovery() WHERE $1::int > 0", 1).Scan(&member, &rec)
			if err != nil || member != now || rec {
				t.Errorf("idle client %d after the switchover: %q in recovery %v, %v; want the new primary %s", i, member, rec, err, now)
			}
		}
	})
	if t.Failed() {
		for _, h := range []string{"iad-1", "iad-2"} {
			b, _ := os.ReadFile(filepath.Join(dir, h+".log"))
			var lines []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "pooler") {
					lines = append(lines, l)
				}
			}
			t.Logf("--- pooler lines of %s:\n%s", h, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	}
}
