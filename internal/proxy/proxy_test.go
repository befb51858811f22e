package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// echoServer is a backend that answers every line with its name and the line.
func echoServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, name+":"+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type fixture struct {
	t       *testing.T
	p       *Proxy
	primary int
	replica int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	p := New("127.0.0.1", slog.New(slog.DiscardHandler))
	t.Cleanup(p.Close)
	return &fixture{t: t, p: p, primary: freePort(t), replica: freePort(t)}
}

func (f *fixture) route(primary, replica Route) {
	f.t.Helper()
	err := f.p.Update([]ClusterRoutes{{Cluster: "db", PrimaryPort: f.primary, ReplicaPort: f.replica, Primary: primary, Replica: replica}})
	if err != nil {
		f.t.Fatalf("Update: %v", err)
	}
}

func forward(member, addr string) Route {
	return Route{Mode: Forward, Backend: Backend{Member: member, Addr: addr}}
}

func dialPort(t *testing.T, port int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ask sends a line and returns the answer, or the read error's text.
func ask(c net.Conn, line string, timeout time.Duration) string {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "error: " + err.Error()
	}
	s, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(s)
}

// closedByProxy reports whether the proxy closed c.
func closedByProxy(c net.Conn, within time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	return err == io.EOF || (err != nil && !isTimeout(err))
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestForwardBothPorts(t *testing.T) {
	f := newFixture(t)
	f.route(forward("db-1", echoServer(t, "db-1")), forward("db-2", echoServer(t, "db-2")))
	if got := ask(dialPort(t, f.primary), "hello", 5*time.Second); got != "db-1:hello" {
		t.Errorf("primary port answered %q, want db-1:hello", got)
	}
	if got := ask(dialPort(t, f.replica), "hi", 5*time.Second); got != "db-2:hi" {
		t.Errorf("replica port answered %q, want db-2:hi", got)
	}
}

func TestHoldReleasesToNewPrimary(t *testing.T) {
	f := newFixture(t)
	f.route(Route{Mode: Hold, Hold: 10 * time.Second}, Route{Mode: Hold})
	c := dialPort(t, f.primary)
	got := make(chan string, 1)
	go func() { got <- ask(c, "held", 10*time.Second) }()
	select {
	case g := <-got:
		t.Fatalf("held connection answered %q before a primary existed", g)
	case <-time.After(300 * time.Millisecond):
	}
	f.route(forward("db-2", echoServer(t, "db-2")), Route{Mode: Hold})
	if g := <-got; g != "db-2:held" {
		t.Errorf("held connection answered %q, want db-2:held", g)
	}
}

func TestHoldExpires(t *testing.T) {
	f := newFixture(t)
	f.route(Route{Mode: Hold, Hold: 200 * time.Millisecond}, Route{Mode: Hold})
	c := dialPort(t, f.primary)
	if !closedByProxy(c, 5*time.Second) {
		t.Errorf("a connection held past its hold was not closed")
	}
}

func TestPrimaryChangeClosesOldConnections(t *testing.T) {
	f := newFixture(t)
	replica := forward("db-3", echoServer(t, "db-3"))
	f.route(forward("db-1", echoServer(t, "db-1")), replica)
	old := dialPort(t, f.primary)
	if got := ask(old, "a", 5*time.Second); got != "db-1:a" {
		t.Fatalf("primary port answered %q", got)
	}
	read := dialPort(t, f.replica)
	if got := ask(read, "r", 5*time.Second); got != "db-3:r" {
		t.Fatalf("replica port answered %q", got)
	}
	f.route(forward("db-2", echoServer(t, "db-2")), forward("db-4", echoServer(t, "db-4")))
	if !closedByProxy(old, 5*time.Second) {
		t.Errorf("connection to the former primary db-1 stayed open")
	}
	if got := ask(read, "r2", 5*time.Second); got != "db-3:r2" {
		t.Errorf("a read connection was disturbed by a route change: %q", got)
	}
	if got := ask(dialPort(t, f.primary), "b", 5*time.Second); got != "db-2:b" {
		t.Errorf("new connection answered %q, want db-2:b", got)
	}
}

func TestRefuseFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.route(forward("db-1", echoServer(t, "db-1")), Route{Mode: Hold})
	open := dialPort(t, f.primary)
	if got := ask(open, "a", 5*time.Second); got != "db-1:a" {
		t.Fatalf("primary port answered %q", got)
	}
	f.route(Route{Mode: Refuse}, Route{Mode: Hold})
	if !closedByProxy(open, 5*time.Second) {
		t.Errorf("open connection survived a refusing route")
	}
	if !closedByProxy(dialPort(t, f.primary), 2*time.Second) {
		t.Errorf("new connection was not refused")
	}
	if got := f.p.Stats().Refused.Load(); got == 0 {
		t.Errorf("refused counter = 0")
	}
}

func TestUnreachableBackendWaitsForNextRoute(t *testing.T) {
	f := newFixture(t)
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))) // nothing listens
	f.route(Route{Mode: Forward, Backend: Backend{Member: "db-1", Addr: dead}, Hold: 10 * time.Second}, Route{Mode: Hold})
	c := dialPort(t, f.primary)
	got := make(chan string, 1)
	go func() { got <- ask(c, "x", 10*time.Second) }()
	time.Sleep(300 * time.Millisecond) // the fault: the primary stays unreachable a while
	f.route(forward("db-2", echoServer(t, "db-2")), Route{Mode: Hold})
	if g := <-got; g != "db-2:x" {
		t.Errorf("answer %q, want db-2:x once the new primary was routed", g)
	}
}

// TestBadClients: garbage, idle and half-open clients, and a backend that
// accepts but never answers, leave the proxy serving everyone else.
func TestBadClients(t *testing.T) {
	f := newFixture(t)
	// A member that accepts connections and never says a word.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	f.route(forward("db-1", echoServer(t, "db-1")), forward("db-9", mute.Addr().String()))

	// Garbage, then a hang-up mid-message.
	for range 20 {
		c := dialPort(t, f.primary)
		c.Write([]byte("\x00\xff garbage \x01\x02"))
		c.(*net.TCPConn).CloseWrite()
	}
	// Many idle connections, half of them to the mute member.
	for i := range 400 {
		port := f.primary
		if i%2 == 1 {
			port = f.replica
		}
		dialPort(t, port)
	}
	muteClient := dialPort(t, f.replica)
	if got := ask(muteClient, "anyone?", 300*time.Millisecond); !strings.HasPrefix(got, "error:") {
		t.Errorf("mute member answered %q", got)
	}
	start := time.Now()
	if got := ask(dialPort(t, f.primary), "still there", 5*time.Second); got != "db-1:still there" {
		t.Errorf("after bad clients the primary port answered %q", got)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a good client waited %s behind bad ones", took)
	}
	if a := f.p.Stats().Active.Load(); a < 400 {
		t.Errorf("active connections = %d, want the 400 idle ones still forwarded", a)
	}
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().(*net.TCPAddr).Port
	p := New("127.0.0.1", slog.New(slog.DiscardHandler))
	defer p.Close()
	err = p.Update([]ClusterRoutes{{Cluster: "db", PrimaryPort: taken, ReplicaPort: freePort(t), Primary: Route{Mode: Hold}, Replica: Route{Mode: Hold}}})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Update on a taken port = %v, want an error saying the port is in use", err)
	}
}

func TestRemovedClusterClosesPorts(t *testing.T) {
	f := newFixture(t)
	f.route(forward("db-1", echoServer(t, "db-1")), Route{Mode: Hold})
	c := dialPort(t, f.primary)
	if got := ask(c, "a", 5*time.Second); got != "db-1:a" {
		t.Fatalf("answer %q", got)
	}
	if err := f.p.Update(nil); err != nil {
		t.Fatal(err)
	}
	if !closedByProxy(c, 5*time.Second) {
		t.Errorf("connection of a removed cluster stayed open")
	}
	if _, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.primary)), time.Second); err == nil {
		t.Errorf("port of a removed cluster still accepts connections")
	}
}

// TestHoldKeepsOpenConnections: a switchover holds new connections but lets
// those already forwarded finish their work until the route moves on.
func TestHoldKeepsOpenConnections(t *testing.T) {
	f := newFixture(t)
	f.route(forward("db-1", echoServer(t, "db-1")), Route{Mode: Hold})
	open := dialPort(t, f.primary)
	if got := ask(open, "a", 5*time.Second); got != "db-1:a" {
		t.Fatalf("answer %q", got)
	}
	f.route(Route{Mode: Hold, Hold: 10 * time.Second}, Route{Mode: Hold})
	if got := ask(open, "b", 5*time.Second); got != "db-1:b" {
		t.Errorf("open connection during a hold answered %q, want db-1:b", got)
	}
	f.route(forward("db-2", echoServer(t, "db-2")), Route{Mode: Hold})
	if !closedByProxy(open, 5*time.Second) {
		t.Errorf("connection to db-1 stayed open after the route moved to db-2")
	}
}
