// Package memberlog keeps a member's log on its host: what its postgres
// wrote and what the agent logged about it, in a bounded pair of files under
// the member's directory. The agent writes it while it runs the member and
// the API reads it, so a member's log can be read from any host, and still
// after postgres stopped, which is when it is most wanted.
//
// The files hold one JSON object per line (a Line). They are the agent's:
// the directory is 0700 and the files 0600, made by the agent's user, so
// that when the agent runs as root a postgres session (pg_read_file runs as
// the postgres OS user) cannot read the agent's lines.
package memberlog

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Sources of a line.
const (
	SourcePostgres = "postgres" // postgres and the postgres tools the agent runs
	SourceAgent    = "agent"    // the agent's own log lines about the member
)

// Line is one line of a member's log.
type Line struct {
	Time   time.Time `json:"time"`
	Source string    `json:"source"`
	Level  string    `json:"level,omitempty"`
	Text   string    `json:"text"`
}

// DefaultMaxBytes is the size at which the log is rotated. One older file
// is kept, so a member's log takes at most twice this on disk: days of a
// quiet member's postgres log, minutes of a member logging every statement.
const DefaultMaxBytes = 4 << 20

const (
	current = "member.log"
	older   = "member.log.1"
)

// Dir is where the log of the member whose directory is memberDir lives.
// It goes with the member's data when the member is removed.
func Dir(memberDir string) string { return filepath.Join(memberDir, "log") }

// Writer appends to a member's log, rotating it by size. It is safe for
// concurrent use. A line it cannot write (a full disk) is dropped: the log
// must never stop or slow the member it describes.
type Writer struct {
	dir string
	max int64

	mu   sync.Mutex
	f    *os.File
	size int64
}

// Open opens the log in dir for appending, creating dir (0700) if needed.
// maxBytes <= 0 means DefaultMaxBytes.
func Open(dir string, maxBytes int64) (*Writer, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	// MkdirAll keeps the mode of a directory that exists; a log dir made
	// readable by someone else is made the agent's alone again.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	w := &Writer{dir: dir, max: maxBytes}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(filepath.Join(w.dir, current), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open log: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("open log: %w", err)
	}
	w.f, w.size = f, fi.Size()
	return nil
}

// Append writes l as one line, in one write, so a reader never sees half
// of it once the write returns.
func (w *Writer) Append(l Line) {
	b, err := json.Marshal(l)
	if err != nil {
		return
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return
	}
	if w.size > 0 && w.size+int64(len(b)) > w.max {
		w.rotate()
		if w.f == nil {
			return
		}
	}
	n, _ := w.f.Write(b)
	w.size += int64(n)
}

// rotate makes the current file the older one, dropping the older one, and
// starts a new current file. A reader following the log notices the rename
// and moves on to the new file.
func (w *Writer) rotate() {
	w.f.Close()
	w.f = nil
	if err := os.Rename(filepath.Join(w.dir, current), filepath.Join(w.dir, older)); err != nil && !os.IsNotExist(err) {
		return
	}
	// The directory may be gone (the member was removed): then nothing
	// more is written, and nothing recreates it.
	_ = w.open()
}

// Close closes the log; later Appends are dropped.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}
