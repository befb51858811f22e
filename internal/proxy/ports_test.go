package proxy

import (
	"fmt"
	"testing"
	"time"
)

// TestPortsCountEachPort checks what /metrics reports per port: each
// port's own connections, its route, and the bytes a connection moved once
// it has closed.
func TestPortsCountEachPort(t *testing.T) {
	f := newFixture(t)
	f.route(forward("db-1", echoServer(t, "db-1")), Route{Mode: Refuse})
	c := dialPort(t, f.primary)
	if got := ask(c, "hello", 5*time.Second); got != "db-1:hello" {
		t.Fatalf("primary port answered %q, want db-1:hello", got)
	}
	r := dialPort(t, f.replica)
	if !closedByProxy(r, 5*time.Second) {
		t.Fatalf("the refusing replica port kept the connection open")
	}
	c.Close()

	byPort := func() map[int]PortStats {
		m := map[int]PortStats{}
		for _, p := range f.p.Ports() {
			m[p.Port] = p
		}
		return m
	}
	deadline := time.Now().Add(5 * time.Second)
	var p, q PortStats
	for {
		ports := byPort()
		p, q = ports[f.primary], ports[f.replica]
		// "hello\n" in, "db-1:hello\n" out.
		if p.Active == 0 && p.ReceivedBytes == 6 && p.SentBytes == 11 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("primary port after one closed connection: %+v; want 6 bytes received, 11 sent, none active", p)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := fmt.Sprintf("%s %s %d/%d/%d", p.Kind, p.Route.Backend.Member, p.Accepted, p.Forwarded, p.Refused); got != "primary db-1 1/1/0" {
		t.Errorf("primary port: kind, member, accepted/forwarded/refused = %s; want primary db-1 1/1/0", got)
	}
	if got := fmt.Sprintf("%s %s %d/%d/%d %d", q.Kind, q.Route.Mode, q.Accepted, q.Forwarded, q.Refused, q.ReceivedBytes); got != "replica refuse 1/0/1 0" {
		t.Errorf("replica port: kind, mode, accepted/forwarded/refused, bytes = %s; want replica refuse 1/0/1 0", got)
	}
	if st := f.p.Stats(); st.Accepted.Load() != 2 || st.ReceivedBytes.Load() != 6 {
		t.Errorf("proxy totals: %d accepted, %d bytes received; want 2 and 6", st.Accepted.Load(), st.ReceivedBytes.Load())
	}
}
