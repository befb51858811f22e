package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFileStoreLeavesRoom puts objects into a store on a small filesystem
// of its own (tmpfs): a write that would leave less than FileStoreReserve
// free is refused, whether its size is known up front or only as it
// streams, and leaves nothing behind; small objects still go in.
func TestFileStoreLeavesRoom(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs on %s: %v: %s", dir, err, out)
		}
		t.Skipf("mount a tmpfs (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	s, err := NewFileStore(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	big := bytes.Repeat([]byte{7}, 95<<20)

	err = s.Put(ctx, "known/size", bytes.NewReader(big), int64(len(big)), PutOptions{})
	if !errors.Is(err, ErrNoRoom) || !strings.Contains(err.Error(), "less than 10 % of the filesystem") {
		t.Errorf("a 95 MB object of known size on a 100 MB filesystem: %v, want ErrNoRoom that says why", err)
	}
	err = s.Put(ctx, "streamed", io.MultiReader(bytes.NewReader(big)), -1, PutOptions{})
	if !errors.Is(err, ErrNoRoom) {
		t.Errorf("a 95 MB object of unknown size: %v, want ErrNoRoom", err)
	}
	if err := s.Put(ctx, "small", bytes.NewReader(big[:1<<20]), 1<<20, PutOptions{}); err != nil {
		t.Errorf("a 1 MB object: %v", err)
	}
	var left []string
	filepath.WalkDir(filepath.Join(dir, "store"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	if len(left) != 1 || !strings.HasSuffix(left[0], "/small") {
		t.Errorf("files in the store after the refused writes: %v, want only the small object", left)
	}
}
