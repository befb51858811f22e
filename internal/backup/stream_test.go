package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStreamerPostgres: a Streamer on a real postgres puts each commit in
// the store within about its interval, as increments that reassemble to the
// bytes of the segment in pg_wal; once its upload deadline passed, nothing more is
// uploaded and Run ends.
func TestStreamerPostgres(t *testing.T) {
	pt := newPGTest(t)
	src := pt.start("primary", true, false, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, err := NewArchive(openStore(t, fileURL(filepath.Join(pt.dir, "store"))), "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		uploaded LSN
		tli      uint32
		allowed  atomic.Bool
	)
	allowed.Store(true)
	until := func() time.Time {
		if allowed.Load() {
			return time.Now().Add(time.Hour)
		}
		return time.Time{}
	}
	st := &Streamer{
		Source: src.connInfo(), Archive: a, Every: 200 * time.Millisecond, Log: pt.log,
		UploadUntil: until,
		OnUpload: func(t uint32, end LSN) {
			mu.Lock()
			tli, uploaded = t, end
			mu.Unlock()
		},
	}
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	src.exec(t, "CREATE TABLE t (i int, note text)")
	// The stream starts at the start of the segment, with initdb's WAL in
	// it: that first upload is not a commit's wait.
	var start string
	src.query(t, "SELECT pg_current_wal_flush_lsn()::text", &start)
	startLSN, _ := ParseLSN(start)
	waitFor(t, time.Minute, "the stream to catch up", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return uploaded >= startLSN, fmt.Sprintf("uploaded to %s of %s", uploaded, startLSN)
	})

	var worst time.Duration
	for i := range 5 {
		src.exec(t, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
		var flushed string
		src.query(t, "SELECT pg_current_wal_flush_lsn()::text", &flushed)
		committed := time.Now()
		want, _ := ParseLSN(flushed)
		waitFor(t, 10*time.Second, fmt.Sprintf("commit %d at %s in the store", i, want), func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return uploaded >= want, fmt.Sprintf("uploaded to %s", uploaded)
		})
		worst = max(worst, time.Since(committed))
	}
	t.Logf("slowest commit to reach the store: %s", worst)
	if worst > 2*time.Second {
		t.Errorf("a commit took %s to reach the store, want within about the 200ms interval plus an upload", worst)
	}

	// The increments reassemble to the segment postgres wrote.
	mu.Lock()
	end := uploaded
	mu.Unlock()
	name := segmentName(tli, uint64(end)/DefaultWALSegmentSize, DefaultWALSegmentSize)
	var got bytes.Buffer
	n, err := a.ReadStreamedWAL(ctx, name, DefaultWALSegmentSize, &got)
	if err != nil {
		t.Fatalf("ReadStreamedWAL(%s): %v", name, err)
	}
	onDisk, err := os.ReadFile(filepath.Join(src.inst.DataDir(), "pg_wal", name))
	if err != nil {
		t.Fatal(err)
	}
	if n < uint32(uint64(end)%DefaultWALSegmentSize) || !bytes.Equal(got.Bytes()[:n], onDisk[:n]) {
		t.Errorf("%s assembled from increments: %d bytes streamed, equal to pg_wal's: %v; want up to %s, equal", name, n, bytes.Equal(got.Bytes()[:n], onDisk[:n]), end)
	}

	// Fenced: nothing more reaches the store.
	allowed.Store(false)
	src.exec(t, "INSERT INTO t SELECT g, 'after the fence' FROM generate_series(1, 2000) g")
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotStreaming) {
			t.Errorf("Streamer.Run after its upload deadline passed = %v, want ErrNotStreaming", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Streamer.Run goes on after its upload deadline passed")
	}
	mu.Lock()
	if uploaded != end {
		t.Errorf("uploaded up to %s after its upload deadline passed at %s", uploaded, end)
	}
	mu.Unlock()
}
