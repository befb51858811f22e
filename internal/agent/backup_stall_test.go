package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestStallGuard: a backup that keeps moving bytes runs on; one that stops
// moving is cancelled with errBackupStalled, so a hung upload cannot hold
// the schedule forever.
func TestStallGuard(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var moved atomic.Int64
	go stallGuard(ctx, cancel, &moved, 300*time.Millisecond)
	for range 12 { // 600 ms of progress, twice the stall limit
		moved.Add(1)
		time.Sleep(50 * time.Millisecond)
	}
	if err := context.Cause(ctx); err != nil {
		t.Fatalf("stallGuard cancelled a backup that was moving: %v", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("stallGuard did not cancel a backup that stopped moving")
	}
	if err := context.Cause(ctx); !errors.Is(err, errBackupStalled) {
		t.Fatalf("cause = %v, want errBackupStalled", err)
	}
}
