package memberlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// ReadOptions say which lines Read gives and for how long.
type ReadOptions struct {
	// Since leaves out lines written before it.
	Since time.Time
	// Follow keeps reading new lines, across rotations, until the context
	// ends or fn or Idle fails.
	Follow bool
	// Poll is how often a follower looks for new lines (default 200ms).
	Poll time.Duration
	// Idle, when following, is called after IdleEvery passes without a
	// line, and every IdleEvery after: a stream sends a heartbeat with it,
	// so that its reader can tell a quiet member from a lost host.
	Idle      func() error
	IdleEvery time.Duration
}

// maxLineBytes bounds one stored line: postgres output is logged in pieces
// of at most 64 KiB, which JSON can make up to six times longer. A longer
// line is not one the Writer wrote, and is skipped.
const maxLineBytes = 1 << 20

// Read calls fn with each line of the log in dir written at or after
// o.Since, oldest first. A log that does not exist yet has no lines; with
// o.Follow, Read waits for it.
func Read(ctx context.Context, dir string, o ReadOptions, fn func(Line) error) error {
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	// The current file is opened before the older one: a rotation in
	// between would otherwise make the older one the lines just missed.
	// When it happens the other way round, both names are the same file.
	cur, err := openIfExists(filepath.Join(dir, current))
	if err != nil {
		return err
	}
	var t *tail
	if cur != nil {
		t = &tail{f: cur, since: o.Since}
	}
	defer func() {
		if t != nil {
			t.f.Close()
		}
	}()
	old, err := openIfExists(filepath.Join(dir, older))
	if err != nil {
		return err
	}
	if old != nil {
		same := cur != nil && sameFile(old, cur)
		if !same {
			err = (&tail{f: old, since: o.Since}).drain(fn)
		}
		old.Close()
		if err != nil {
			return err
		}
	}
	if t != nil {
		if err := t.drain(fn); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	quiet := time.Now()
	timer := time.NewTimer(o.Poll)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		timer.Reset(o.Poll)
		n := 0
		count := func(l Line) error { n++; return fn(l) }
		if t != nil {
			if err := t.drain(count); err != nil {
				return err
			}
		}
		// A rename to the older name, or a first file: what the current
		// name holds now is a new file, read from its start once the one
		// in hand is read to its end.
		if next, err := openIfExists(filepath.Join(dir, current)); err != nil {
			return err
		} else if next != nil && (t == nil || !sameFile(next, t.f)) {
			if t != nil {
				if err := t.drain(count); err != nil {
					next.Close()
					return err
				}
				t.f.Close()
			}
			t = &tail{f: next, since: o.Since}
			if err := t.drain(count); err != nil {
				return err
			}
		} else if next != nil {
			next.Close()
		}
		if n > 0 {
			quiet = time.Now()
		} else if o.Idle != nil && o.IdleEvery > 0 && time.Since(quiet) >= o.IdleEvery {
			if err := o.Idle(); err != nil {
				return err
			}
			quiet = time.Now()
		}
	}
}

func openIfExists(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	return f, nil
}

func sameFile(a, b *os.File) bool {
	fa, err1 := a.Stat()
	fb, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// tail reads one file's complete lines, keeping a line not finished yet
// for the next drain.
type tail struct {
	f       *os.File
	since   time.Time
	partial []byte
	skip    bool // the partial line is too long and is being skipped
}

// drain calls fn with every complete line from where the last drain
// stopped to the end of the file.
func (t *tail) drain(fn func(Line) error) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := t.f.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				if !t.skip {
					t.partial = append(t.partial, data...)
					if len(t.partial) > maxLineBytes {
						t.partial, t.skip = nil, true
					}
				}
				break
			}
			line := data[:i]
			data = data[i+1:]
			if t.skip {
				t.skip = false
				continue
			}
			if len(t.partial) > 0 {
				line = append(t.partial, line...)
				t.partial = nil
			}
			if before(line, t.since) {
				continue
			}
			var l Line
			// A line that does not parse was cut by a crash mid-write:
			// skipped, as the lines around it are whole.
			if json.Unmarshal(line, &l) != nil || l.Time.Before(t.since) {
				continue
			}
			if err := fn(l); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read log: %w", err)
		}
	}
}

// timePrefix is how every line the Writer writes starts: Line's first
// field.
var timePrefix = []byte(`{"time":"`)

// before reports whether line was surely written before since, from its
// time alone: reading a log since a minute ago then decodes only the
// lines of the last minute.
func before(line []byte, since time.Time) bool {
	if since.IsZero() || !bytes.HasPrefix(line, timePrefix) {
		return false
	}
	rest := line[len(timePrefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return false
	}
	ts, err := time.Parse(time.RFC3339Nano, string(rest[:end]))
	return err == nil && ts.Before(since)
}
