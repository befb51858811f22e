package backup

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// FileStoreReserve is the share of its filesystem, in percent, that a file
// store leaves free. A store directory often shares its filesystem with
// members' data (file:///var/lib/pgfleet/backups next to the members);
// filling it would stop every postgres there with a PANIC on its next WAL
// write. Refusing first lets archiving fail instead, which leaves WAL in
// pg_wal, where the disk guard sees it and stops the cluster's writes at the
// same threshold (fleet.DefaultDiskGuard) before the disk is full.
const FileStoreReserve = 10

// ErrNoRoom is wrapped into the error of a write a file store refused
// because it would leave less than FileStoreReserve of its filesystem free.
var ErrNoRoom = errors.New("no room")

// roomCheckEvery is how many bytes of an object of unknown size (a
// streamed base backup) may be written between two looks at the
// filesystem; each look asks for that much room above the reserve.
const roomCheckEvery = 32 << 20

// CheckRoom refuses a write of n more bytes into dir when it would leave
// less than FileStoreReserve of the filesystem free, with an error wrapping
// ErrNoRoom: for files that, like a file store's objects, share a
// filesystem with members' data (the agent's spool of WAL fetched ahead).
func CheckRoom(dir string, n int64) error { return checkRoom(dir, n) }

// checkRoom refuses a write of n more bytes into dir when it would leave
// less than FileStoreReserve of the filesystem free.
func checkRoom(dir string, n int64) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := int64(fs.Bsize)
	free, size := int64(fs.Bavail)*bs, int64(fs.Blocks)*bs
	if free-n >= size*FileStoreReserve/100 {
		return nil
	}
	return fmt.Errorf("%w: writing %d bytes more would leave less than %d %% of the filesystem of %s free (%d of %d bytes free); free space there or point the cluster's backups at another store: %w",
		ErrNoRoom, n, FileStoreReserve, dir, free, size, unix.ENOSPC)
}

// roomWriter writes an object of unknown size, asking checkRoom for the
// next roomCheckEvery bytes before it writes them.
type roomWriter struct {
	w    io.Writer
	dir  string
	room int64 // bytes that may still be written before the next look
}

func (r *roomWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > r.room {
		if err := checkRoom(r.dir, roomCheckEvery); err != nil {
			return 0, err
		}
		r.room = roomCheckEvery
	}
	n, err := r.w.Write(p)
	r.room -= int64(n)
	return n, err
}
