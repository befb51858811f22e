package postgres

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testBin finds the server binaries. A missing installation fails the test
// in CI (where it is a broken setup) and skips it elsewhere.
func testBin(t *testing.T) Bin {
	t.Helper()
	bin, err := FindBin("")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("FindBin: %v", err)
		}
		t.Skipf("FindBin: %v", err)
	}
	return bin
}

// testUser is who postgres runs as in tests.
func testUser(t *testing.T) OSUser {
	t.Helper()
	u, err := CurrentOrPostgres()
	if err != nil {
		t.Fatalf("CurrentOrPostgres: %v", err)
	}
	return u
}

// testDir returns a fresh directory that the postgres OS user can traverse.
// t.TempDir makes its per-test parent 0700 and, as root, owned by root, which
// would lock out a postgres running as the postgres user.
func testDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	dirs := []string{dir}
	if parent := filepath.Dir(dir); strings.HasPrefix(parent, filepath.Clean(os.TempDir())+string(filepath.Separator)) {
		dirs = append(dirs, parent)
	}
	for _, d := range dirs {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", d, err)
		}
	}
	return dir
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// logSink collects log output for assertions and echoes it to the test log,
// but only while the test runs: postgres output may still trickle in from
// goroutines after the test has finished, which t.Log does not allow.
type logSink struct {
	mu   sync.Mutex
	t    *testing.T
	buf  bytes.Buffer
	done bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if !s.done {
		s.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// testLogger returns a logger writing to a new logSink. Its cleanup is
// registered first, so it runs after the instances' cleanups.
func testLogger(t *testing.T) (*slog.Logger, *logSink) {
	sink := &logSink{t: t}
	t.Cleanup(func() {
		sink.mu.Lock()
		sink.done = true
		sink.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

// waitFor polls cond until it returns true or timeout passes, then fails the
// test with the last state cond described.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, state)
		}
		<-tick.C
	}
}

const testPassword = "super secret"

// testInstance is an Instance under test with its superuser address.
type testInstance struct {
	*Instance
	name string
	port int
	logs *logSink
}

// superuser returns the address of the instance for the postgres superuser.
func (ti *testInstance) superuser() ConnInfo {
	return ConnInfo{Host: "127.0.0.1", Port: ti.port, User: "postgres", Password: testPassword, Database: "postgres"}
}

// newTestInstance returns an Instance named name with DataDir in a fresh
// directory and a free port; it is stopped when the test ends.
func newTestInstance(t *testing.T, name string) *testInstance {
	t.Helper()
	log, sink := testLogger(t)
	inst := New(Config{
		Bin:     testBin(t),
		DataDir: filepath.Join(testDir(t), name),
		User:    testUser(t),
		Logger:  log.With("member", name),
	})
	t.Cleanup(func() {
		if err := inst.Stop(10 * time.Second); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return &testInstance{Instance: inst, name: name, port: freePort(t), logs: sink}
}

// settings returns primary settings for ti.
func (ti *testInstance) settings() Settings {
	return Settings{Name: ti.name, ListenAddr: "127.0.0.1", Port: ti.port}
}

// startPrimary initializes, configures and starts a primary.
func startPrimary(t *testing.T, name string) *testInstance {
	t.Helper()
	ti := newTestInstance(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := ti.InitDB(ctx, testPassword); err != nil {
		t.Fatalf("InitDB: %v", err)
	}
	if err := ti.Configure(ti.settings()); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	if err := ti.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return ti
}
