package backup

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Credentials of the test S3 server.
const (
	testAccessKey = "pgfleet-test-access"
	testSecretKey = "pgfleet-test-secret-3b9f"
	testBucket    = "pgfleet-test"
)

// versityBin finds the versitygw binary: on PATH or in $HOME/go/bin, where
// scripts/setup.sh installs it. Missing, it fails the test in CI and skips
// it elsewhere.
func versityBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := "versitygw not found: install it with `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0` (scripts/setup.sh does)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// testS3 is a VersityGW server on loopback with a bucket.
type testS3 struct {
	addr string // 127.0.0.1:PORT
	dir  string // its posix root
}

// url returns a store URL under prefix in the test bucket.
func (s *testS3) url(prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&insecure=true", testBucket, prefix, s.addr)
}

// startS3 starts a VersityGW server for the test, sets the AWS credential
// variables for it (which is why S3 tests do not run in parallel) and
// creates the test bucket.
func startS3(t *testing.T) *testS3 {
	t.Helper()
	bin := versityBin(t)
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "--access", testAccessKey, "--secret", testSecretKey, "--port", addr, "--quiet", "posix", dir)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	waitFor(t, 30*time.Second, "versitygw to accept connections", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("versitygw exited: %v; output:\n%s", cmd.ProcessState, out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})

	t.Setenv("AWS_ACCESS_KEY_ID", testAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-such-credentials-file"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-such-config-file"))
	s := &testS3{addr: addr, dir: dir}
	st, err := OpenStore(context.Background(), s.url(""))
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.(*S3Store).MakeBucket(ctx); err != nil {
		t.Fatalf("MakeBucket: %v", err)
	}
	return s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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

// fileURL is the store URL of a directory.
func fileURL(dir string) string { return (&url.URL{Scheme: "file", Path: dir}).String() }

// openStore opens a store URL or fails the test.
func openStore(t *testing.T, u string) Store {
	t.Helper()
	s, err := OpenStore(context.Background(), u)
	if err != nil {
		t.Fatalf("OpenStore(%s): %v", u, err)
	}
	return s
}

func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s = %q, want it to contain %q", what, s, sub)
		}
	}
}
