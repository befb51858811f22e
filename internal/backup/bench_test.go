package backup

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkBackup measures PutBackup and GetBackup on a file store, with
// data that compresses about as well as a pgbench database.
func BenchmarkBackup(b *testing.B) {
	rel := payload(64<<20, 42)
	data := fakeBackup{files: map[string][]byte{"base/1/16384": rel, "base/1/16385": rel[:32<<20]}}.tar(b)
	for _, encrypted := range []bool{false, true} {
		var key *Key
		if encrypted {
			key, _ = NewKey(make([]byte, KeySize))
		}
		b.Run(fmt.Sprintf("encrypted=%v", encrypted), func(b *testing.B) {
			dir := b.TempDir()
			s, err := NewFileStore(filepath.Join(dir, "store"))
			if err != nil {
				b.Fatal(err)
			}
			a, _ := NewArchive(s, "bench", key)
			b.SetBytes(int64(len(data)))
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("b%d", i)
				m, err := a.PutBackup(context.Background(), id, bytes.NewReader(data), BackupInfo{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := a.GetBackup(context.Background(), id, filepath.Join(dir, id), nil); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(m.StoredBytes)/float64(m.RawBytes), "stored/raw")
			}
		})
	}
}
