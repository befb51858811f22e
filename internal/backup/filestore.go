package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tmpPrefix starts the names of files being written. They are never listed
// and keys may not use it. A crash can leave one behind; it is garbage, not
// an object.
const tmpPrefix = ".tmp-"

// FileStore keeps objects as files under a directory: key a/b/c is the file
// DIR/a/b/c.
//
// Put writes a temporary file in the object's directory, fsyncs it, moves it
// to its name and fsyncs the directory, so a crash leaves either no object or
// the whole one, never part of one under its name. CreateOnly moves it with
// renameat2(RENAME_NOREPLACE) (or link(2) where the file system lacks it),
// which the kernel makes atomic: of two concurrent writers of a key exactly
// one wins.
//
// Running as root, FileStore gives what it creates to the owner of DIR, so
// the agent (root) and archive_command (run by postgres as the postgres user)
// can share a store whose directory the postgres user owns.
type FileStore struct {
	root     string
	url      string
	uid, gid int // owner for new files and directories; -1 to keep ours
}

var _ Store = (*FileStore)(nil)

func openFileStore(u *url.URL) (*FileStore, error) {
	if u.Host != "" && u.Host != "localhost" {
		return nil, fmt.Errorf("store URL %q names host %q: want file:///ABSOLUTE/PATH (three slashes)", u.String(), u.Host)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("store URL %q: a file URL takes no parameters: want file:///ABSOLUTE/PATH", redactURL(u.String()))
	}
	if u.Path == "" || !filepath.IsAbs(u.Path) {
		return nil, fmt.Errorf("store URL %q: want file:///ABSOLUTE/PATH", u.String())
	}
	return NewFileStore(u.Path)
}

// NewFileStore returns a store in dir, creating dir if needed.
func NewFileStore(dir string) (*FileStore, error) {
	dir = filepath.Clean(dir)
	s := &FileStore{root: dir, url: (&url.URL{Scheme: "file", Path: dir}).String(), uid: -1, gid: -1}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", s.url, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", s.url, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("store %s: %s is not a directory", s.url, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 && st.Uid != 0 {
		s.uid, s.gid = int(st.Uid), int(st.Gid)
	}
	return s, nil
}

func (s *FileStore) String() string { return s.url }

func (s *FileStore) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

func (s *FileStore) Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) error {
	if err := s.put(ctx, key, r, size, opts); err != nil {
		return fmt.Errorf("store %s: put %s: %w", s.url, key, err)
	}
	return nil
}

func (s *FileStore) put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) error {
	if err := checkKey(key); err != nil {
		return err
	}
	final := s.path(key)
	dir := filepath.Dir(final)
	if opts.CreateOnly {
		// Not needed for correctness (the rename below decides), but saves
		// copying an object that cannot be stored.
		if _, err := os.Lstat(final); err == nil {
			return ErrExists
		}
	}
	if err := s.mkdirAll(dir); err != nil {
		return err
	}
	if size >= 0 {
		if err := checkRoom(dir, size); err != nil {
			return err
		}
	}
	f, err := os.CreateTemp(dir, tmpPrefix+filepath.Base(final)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	var w io.Writer = f
	if size < 0 {
		w = &roomWriter{w: f, dir: dir}
	}
	n, err := io.Copy(w, ctxReader{ctx, r})
	if err == nil && size >= 0 && n != size {
		err = fmt.Errorf("read %d bytes, expected %d", n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.chown(tmp)
	}
	if err == nil {
		if opts.CreateOnly {
			err = renameNoReplace(tmp, final)
		} else {
			err = os.Rename(tmp, final)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// renameNoReplace moves oldpath to newpath unless newpath exists, in which
// case it fails with ErrExists.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTSUP) {
		// The file system cannot do it; a hard link is just as exclusive.
		if err = os.Link(oldpath, newpath); err == nil {
			return os.Remove(oldpath)
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return ErrExists
	}
	return err
}

// mkdirAll creates dir and its missing parents under the root, making each
// new entry durable in its parent.
func (s *FileStore) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	var missing []string
	for d := dir; d != s.root && strings.HasPrefix(d, s.root); d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		d := missing[i]
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := s.chown(d); err != nil {
			return err
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func (s *FileStore) chown(path string) error {
	if s.uid < 0 {
		return nil
	}
	return os.Lchown(path, s.uid, s.gid)
}

func (s *FileStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("store %s: get %s: %w", s.url, key, err)
	}
	f, err := os.Open(s.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store %s: %s: %w", s.url, key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store %s: get %s: %w", s.url, key, err)
	}
	return f, nil
}

func (s *FileStore) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return ObjectInfo{}, fmt.Errorf("store %s: stat %s: %w", s.url, key, err)
	}
	fi, err := os.Stat(s.path(key))
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.Mode().IsRegular() {
		return ObjectInfo{}, fmt.Errorf("store %s: %s: %w", s.url, key, ErrNotFound)
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("store %s: stat %s: %w", s.url, key, err)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

func (s *FileStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = s.path(prefix[:i])
	}
	var out []ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) || !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		out = append(out, ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store %s: list %s: %w", s.url, prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (s *FileStore) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("store %s: delete %s: %w", s.url, key, err)
	}
	p := s.path(key)
	err := os.Remove(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = syncDir(filepath.Dir(p))
	}
	if err != nil {
		return fmt.Errorf("store %s: delete %s: %w", s.url, key, err)
	}
	return nil
}

// syncDir fsyncs a directory so that entries created, renamed or removed in
// it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
