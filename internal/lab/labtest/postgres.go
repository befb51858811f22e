package labtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// PlainPostgres is a PostgreSQL outside pgfleet, as an import's source
// is: its own initdb and settings, nothing of pgfleet's around it.
type PlainPostgres struct {
	// Password is the superuser's, checked with SCRAM over TCP; "" trusts
	// every connection.
	Password string
	// WALLevel is wal_level ("" leaves initdb's default, replica).
	WALLevel string
}

// StartPostgres starts p on a free loopback port, as the postgres OS user
// when the test runs as root, and returns its superuser's URL (database
// postgres, no TLS) once it accepts connections. It stops when the test
// ends.
func StartPostgres(t testing.TB, p PlainPostgres) string {
	t.Helper()
	bin := RequirePostgres(t)
	dir := TestDir(t)
	u, err := postgres.CurrentOrPostgres()
	if err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 && u.UID != 0 {
		cred = &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID)}
		if err := os.Chown(dir, u.UID, u.GID); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(bin.Path(name), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "HOME=" + dir}
		cmd.Dir = dir
		return cmd
	}
	data := filepath.Join(dir, "data")
	initdb := []string{"-D", data, "-U", "postgres", "-A", "trust"}
	if p.Password != "" {
		pwfile := filepath.Join(dir, "pw")
		if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if cred != nil {
			os.Chown(pwfile, u.UID, u.GID)
		}
		initdb = []string{"-D", data, "-U", "postgres", "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256"}
	}
	if out, err := run("initdb", initdb...).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nmax_replication_slots = 10\nmax_wal_senders = 10\nfsync = off\n", port, dir)
	if p.WALLevel != "" {
		conf += "wal_level = " + p.WALLevel + "\n"
	}
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(conf)
	f.Close()
	pm := run("postgres", "-D", data)
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	pm.Stdout, pm.Stderr = logf, logf
	if err := pm.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pm.Process.Signal(syscall.SIGINT) // fast shutdown
		done := make(chan struct{})
		go func() { pm.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			pm.Process.Kill()
			<-done
		}
		logf.Close()
	})
	user := "postgres"
	if p.Password != "" {
		user += ":" + p.Password
	}
	rawURL := fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", user, port)
	WaitFor(t, 30*time.Second, "postgres accepts connections", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, rawURL)
		if err != nil {
			return false, err.Error()
		}
		conn.Close(ctx)
		return true, ""
	})
	return rawURL
}

// Connect opens a connection to rawURL within 10 s, failing the test
// otherwise, and closes it when the test ends.
func Connect(t testing.TB, rawURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
