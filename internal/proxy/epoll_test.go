package proxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// streamServer is a backend that, on every connection, sends out bytes to
// the client while it reads everything the client sends, and reports the
// SHA-256 of what it read once the client closes.
func streamServer(t *testing.T, out []byte) (addr string, got <-chan [32]byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sums := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		wrote := make(chan struct{})
		go func() {
			c.Write(out)
			close(wrote)
		}()
		h := sha256.New()
		io.Copy(h, c)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sums <- s
		<-wrote
	}()
	return ln.Addr().String(), sums
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Both directions carry more than every socket buffer on the way holds,
// while the client reads nothing until it has sent all it has and ended
// its side: the proxy keeps what the client cannot take yet, stops reading
// the backend meanwhile, passes the client's end of stream on while the
// answer still flows, and every byte arrives once, in order, and is counted.
func TestForwardLargeBothWaysWithASlowReader(t *testing.T) {
	f := newFixture(t)
	const size = 24 << 20
	down, up := randomBytes(size, 1), randomBytes(size, 2)
	addr, got := streamServer(t, down)
	f.route(forward("db-1", addr), Route{Mode: Hold})
	c := dialPort(t, f.primary)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(up); err != nil {
		t.Fatalf("send %d bytes through the proxy: %v", size, err)
	}
	c.(*net.TCPConn).CloseWrite()
	read, err := io.ReadAll(c)
	if err != nil && len(read) < size {
		t.Fatalf("read back: %v after %d of %d bytes", err, len(read), size)
	}
	if !bytes.Equal(read, down) {
		t.Fatalf("the client got %d bytes that differ from the %d the backend sent", len(read), size)
	}
	select {
	case s := <-got:
		if s != sha256.Sum256(up) {
			t.Fatalf("the backend got bytes that differ from what the client sent")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the backend never saw the client's end of stream")
	}
	st := f.p.Stats()
	if r, s := st.ReceivedBytes.Load(), st.SentBytes.Load(); r != size || s != size {
		t.Errorf("counted %d bytes received and %d sent, want %d each", r, s, size)
	}
}

// A backend that writes its last words and closes (a FATAL before it ends
// the session) gets them to the client, and then the client sees the end.
func TestBackendLastWordsReachTheClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("FATAL: terminating connection due to administrator command\n"))
		c.Close()
	}()
	f := newFixture(t)
	f.route(forward("db-1", ln.Addr().String()), Route{Mode: Hold})
	c := dialPort(t, f.primary)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(b) != "FATAL: terminating connection due to administrator command\n" {
		t.Fatalf("client got %q", b)
	}
}

// Many short connections at once, each asking and checking its own answer:
// descriptors are reused as fast as the kernel hands them out, and no
// connection ever gets another's bytes.
func TestManyShortConnections(t *testing.T) {
	f := newFixture(t)
	f.route(forward("db-1", echoServer(t, "db-1")), Route{Mode: Hold})
	var wg sync.WaitGroup
	errs := make(chan string, 400)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.primary)))
				if err != nil {
					errs <- err.Error()
					return
				}
				line := strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if got := ask(c, line, 10*time.Second); got != "db-1:"+line {
					errs <- "asked " + line + ", got " + got
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// Closing the proxy closes every connection it forwards and leaves no
// descriptor and no goroutine behind.
func TestCloseLeavesNothingBehind(t *testing.T) {
	backend := echoServer(t, "db-1")
	fds0, g0 := openFDs(t), runtime.NumGoroutine()
	p := New("127.0.0.1", slog.New(slog.DiscardHandler))
	port := freePort(t)
	if err := p.Update([]ClusterRoutes{{Cluster: "db", PrimaryPort: port, ReplicaPort: freePort(t), Primary: forward("db-1", backend), Replica: Route{Mode: Hold}}}); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for i := range 20 {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := ask(c, strconv.Itoa(i), 10*time.Second); got != "db-1:"+strconv.Itoa(i) {
			t.Fatalf("asked %d, got %q", i, got)
		}
		conns = append(conns, c)
	}
	p.Close()
	for i, c := range conns {
		if !closedByProxy(c, 5*time.Second) {
			t.Errorf("connection %d stayed open after Close", i)
		}
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	var fds, g int
	for {
		fds, g = openFDs(t), runtime.NumGoroutine()
		// The echo server's goroutines end as the clients' ends close.
		if fds <= fds0 && g <= g0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Close: %d descriptors open (%d before), %d goroutines (%d before)", fds, fds0, g, g0)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
