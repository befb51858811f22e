package memberlog

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
)

// Tee returns a handler that passes every record to next and appends the
// member's lines to w: what postgres and its tools wrote (the records the
// postgres package logs as "postgres" with the line in "pg"), and the
// agent's own records at Info and above, whatever next's level. The
// "cluster" and "member" attributes are left out of the lines: every line
// of a member's log has them.
func Tee(next slog.Handler, w *Writer) slog.Handler {
	return &tee{next: next, w: w}
}

type tee struct {
	next   slog.Handler
	w      *Writer
	attrs  []slog.Attr // from WithAttrs, keys qualified by their groups
	prefix string      // the open groups, "g1.g2."
}

func (h *tee) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *tee) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.next.Enabled(ctx, r.Level) {
		err = h.next.Handle(ctx, r)
	}
	if r.Level >= slog.LevelInfo || isPostgres(r) {
		h.w.Append(h.line(r))
	}
	return err
}

func isPostgres(r slog.Record) bool {
	if r.Message != "postgres" {
		return false
	}
	found := false
	r.Attrs(func(a slog.Attr) bool {
		found = a.Key == "pg"
		return !found
	})
	return found
}

// line makes a record one line of the log: postgres's own line as it wrote
// it (without the timestamp the line's time repeats), or the agent's
// message and attributes with anything that could be a secret masked.
func (h *tee) line(r slog.Record) Line {
	l := Line{Time: r.Time.UTC(), Source: SourceAgent, Level: r.Level.String()}
	var attrs []slog.Attr
	pg, cmd := "", ""
	collect := func(a slog.Attr, prefix string) {
		key := prefix + a.Key
		switch {
		case key == "cluster" || key == "member" || key == "component":
			return
		case r.Message == "postgres" && key == "pg":
			pg = a.Value.String()
			return
		case r.Message == "postgres" && key == "cmd":
			cmd = a.Value.String()
		}
		attrs = append(attrs, slog.Attr{Key: key, Value: a.Value})
	}
	for _, a := range h.attrs {
		collect(a, "")
	}
	r.Attrs(func(a slog.Attr) bool { collect(a, h.prefix); return true })
	if r.Message == "postgres" && pg != "" {
		l.Source = SourcePostgres
		l.Text = Redact(StripPostgresTime(pg))
		if cmd != "" {
			l.Text = cmd + ": " + l.Text
		}
		return l
	}
	var b strings.Builder
	b.WriteString(Redact(r.Message))
	for _, a := range attrs {
		b.WriteByte(' ')
		b.WriteString(a.Key)
		b.WriteByte('=')
		v := a.Value.Resolve().String()
		if secretKey(a.Key) {
			v = redacted
		} else {
			v = Redact(v)
		}
		if v == "" || strings.ContainsAny(v, " \t\"=") {
			v = `"` + strings.ReplaceAll(v, `"`, `\"`) + `"`
		}
		b.WriteString(v)
	}
	l.Text = b.String()
	return l
}

func (h *tee) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		c.attrs = append(c.attrs, slog.Attr{Key: h.prefix + a.Key, Value: a.Value})
	}
	return &c
}

func (h *tee) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.prefix = h.prefix + name + "."
	return &c
}

const redacted = "[redacted]"

// secretKey reports whether an attribute's key names something that must
// never be shown, whatever its value looks like.
func secretKey(key string) bool {
	k := strings.ToLower(key)
	for _, s := range []string{"password", "passwd", "secret", "token", "conninfo", "dsn", "private"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

var (
	// urlPassword is the password of a URL's user info:
	// postgres://user:PASSWORD@host.
	urlPassword = regexp.MustCompile(`(://[^:/@\s]*:)[^@\s]+@`)
	// kvPassword is a libpq keyword/value password (password=x or
	// password='x y'), or the like in a message.
	kvPassword = regexp.MustCompile(`(?i)\b((?:password|passwd|secret|token)\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s,;&]+)`)
	// apiToken is a pgfleet API token, read-only or not.
	apiToken = regexp.MustCompile(`\bpgf(?:ro)?_[0-9a-f_]{8,}`)
	// sqlPassword is the password of CREATE or ALTER ROLE ... PASSWORD
	// 'x', which postgres logs with the statement when it fails.
	sqlPassword = regexp.MustCompile(`(?i)\b(password\s+)'(?:[^']|'')*'`)
)

// Redact masks the passwords and tokens s might carry: a URL's password, a
// keyword/value password, a role's password in SQL and pgfleet tokens. The
// agent logs none of them, and pgfleet sends postgres only SCRAM verifiers;
// this keeps a future agent line, or a statement someone typed that failed,
// from showing one to whoever reads the log.
func Redact(s string) string {
	// The expressions are slow beside a log line's other costs; most
	// lines need none of them.
	if strings.Contains(s, "://") {
		s = urlPassword.ReplaceAllString(s, "${1}"+redacted+"@")
	}
	if strings.Contains(s, "pgf") {
		s = apiToken.ReplaceAllString(s, redacted)
	}
	if !strings.ContainsAny(s, "=' ") {
		return s
	}
	lower := strings.ToLower(s)
	pw := strings.Contains(lower, "passw")
	if strings.Contains(s, "=") && (pw || strings.Contains(lower, "secret") || strings.Contains(lower, "token")) {
		s = kvPassword.ReplaceAllString(s, "${1}"+redacted)
	}
	if pw && strings.Contains(s, "'") {
		s = sqlPassword.ReplaceAllString(s, "${1}'"+redacted+"'")
	}
	return s
}

// postgresTime is the timestamp log_line_prefix's %m puts first on a line:
// "2026-01-02 15:04:05.123 UTC ".
var postgresTime = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [A-Za-z][A-Za-z0-9+\-/_]* `)

// StripPostgresTime removes the timestamp postgres puts at the start of a
// line: the line's time says when it was written, to the millisecond.
func StripPostgresTime(s string) string {
	if loc := postgresTime.FindStringIndex(s); loc != nil {
		return s[loc[1]:]
	}
	return s
}
