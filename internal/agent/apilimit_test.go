package agent

import (
	"net"
	"testing"
	"time"
)

// TestLimitPerIP opens more connections from one address than it may hold:
// the ones beyond the cap are closed at once, and a closed one frees its
// slot.
func TestLimitPerIP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := limitPerIP(ln)
	defer l.Close()
	accepted := make(chan net.Conn, 2*MaxAPIConnsPerIP)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for range MaxAPIConnsPerIP + 1 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	var held []net.Conn
	for range MaxAPIConnsPerIP {
		select {
		case c := <-accepted:
			held = append(held, c)
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d connections accepted, want %d", len(held), MaxAPIConnsPerIP)
		}
	}
	// The one beyond the cap is closed by the server: a read sees EOF.
	last := clients[MaxAPIConnsPerIP]
	last.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := last.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("connection %d beyond the cap: read = %v, want it closed", MaxAPIConnsPerIP+1, err)
	}
	held[0].Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot was not given to the next connection")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
