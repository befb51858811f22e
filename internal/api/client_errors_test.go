package api

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestNoAgentAnswers checks what the CLI says with the fleet down: the
// reason once, with every address that gave it.
func TestNoAgentAnswers(t *testing.T) {
	var eps []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, l.Addr().String())
		l.Close() // nothing listens there now
	}
	c := NewClient(eps, "pgf_x", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Health(ctx)
	if err == nil {
		t.Fatal("Health with no agent up succeeded")
	}
	msg := err.Error()
	if n := strings.Count(msg, "connection refused"); n != 1 || !strings.Contains(msg, strings.Join(eps, ", ")+": connect: connection refused") {
		t.Errorf("error = %q; want the reason once, after every address", msg)
	}
}
