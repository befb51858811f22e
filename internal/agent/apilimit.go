package agent

import (
	"net"
	"sync"
)

// MaxAPIConnsPerIP caps the API connections one address holds, so that a
// single client (a misbehaving script, or someone without a token) cannot
// take the whole MaxAPIConns from the CLI, joining hosts and health checks.
const MaxAPIConnsPerIP = 32

// perIPListener closes connections beyond MaxAPIConnsPerIP from one
// address at once.
type perIPListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[string]int
}

func limitPerIP(l net.Listener) net.Listener {
	return &perIPListener{Listener: l, conns: map[string]int{}}
}

func (l *perIPListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, _, err := net.SplitHostPort(c.RemoteAddr().String())
		if err != nil {
			ip = c.RemoteAddr().String()
		}
		l.mu.Lock()
		full := l.conns[ip] >= MaxAPIConnsPerIP
		if !full {
			l.conns[ip]++
		}
		l.mu.Unlock()
		if full {
			c.Close()
			continue
		}
		return &countedConn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *perIPListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[ip]--; l.conns[ip] <= 0 {
		delete(l.conns, ip)
	}
}

// countedConn gives its slot back once, when it is closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
