package postgres

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
)

// tailLines is how many recent output lines an output keeps for error
// messages: enough to hold the FATAL line and its context when postgres fails
// to start, few enough to read in one error.
const tailLines = 10

// maxLine caps one logged line. Postgres can log a statement of any size;
// longer lines are logged in pieces rather than buffered without bound.
const maxLine = 64 << 10

// output is an io.Writer for a child's stdout and stderr. It logs each line as
// its own record (attr "pg") and keeps the last few for error messages. It
// splits on '\r' as well as '\n' because pg_basebackup redraws its progress
// line with carriage returns when it thinks it has a terminal.
type output struct {
	log    *slog.Logger
	onLine func(string) bool // when set and it returns true, the line is not logged

	mu   sync.Mutex
	buf  []byte
	tail []string
}

func newOutput(log *slog.Logger, onLine func(string) bool) *output {
	return &output{log: log, onLine: onLine}
}

// Write implements io.Writer. exec.Cmd calls it from one goroutine at a time
// when Stdout and Stderr are the same *output.
func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	for {
		i := bytes.IndexAny(o.buf, "\r\n")
		if i < 0 {
			break
		}
		o.emit(string(o.buf[:i]))
		o.buf = o.buf[i+1:]
	}
	for len(o.buf) >= maxLine {
		o.emit(string(o.buf[:maxLine]))
		o.buf = o.buf[maxLine:]
	}
	// Keep the unfinished line without pinning the whole earlier buffer.
	o.buf = append([]byte(nil), o.buf...)
	return len(p), nil
}

// Flush emits an unterminated last line, once the child has exited.
func (o *output) Flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf) > 0 {
		o.emit(string(o.buf))
		o.buf = nil
	}
}

func (o *output) emit(line string) {
	if strings.TrimSpace(line) == "" {
		return
	}
	if o.onLine != nil && o.onLine(line) {
		return
	}
	if len(o.tail) == tailLines {
		o.tail = append(o.tail[:0], o.tail[1:]...)
	}
	o.tail = append(o.tail, line)
	o.log.Log(context.Background(), lineLevel(line), "postgres", "pg", line)
}

// Tail returns the last lines written, oldest first.
func (o *output) Tail() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.tail...)
}

// tailText formats the last lines for an error message.
func (o *output) tailText() string {
	t := o.Tail()
	if len(t) == 0 {
		return "(no output)"
	}
	return "\n\t" + strings.Join(t, "\n\t")
}

// lineLevel maps a postgres message severity ("... FATAL:  ...") to a slog
// level so that a FATAL during startup stands out in the agent's log.
// Lines that carry no severity (continuations, tool output) are Info.
func lineLevel(line string) slog.Level {
	m := severityRE.FindStringSubmatch(line)
	if m == nil {
		return slog.LevelInfo
	}
	switch m[1] {
	case "PANIC", "FATAL", "ERROR":
		return slog.LevelError
	case "WARNING":
		return slog.LevelWarn
	case "LOG", "INFO", "NOTICE":
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

// severityRE finds the severity postgres writes before a message: the word,
// a colon and two spaces.
var severityRE = regexp.MustCompile(`\b(PANIC|FATAL|ERROR|WARNING|NOTICE|INFO|LOG|DEBUG[1-5]):  `)
