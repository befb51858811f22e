package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/importer"
	"github.com/pgfleet/pgfleet/internal/migrate"
)

// Importing a database from the console: internal/importer, the code
// `pgfleet import` runs, in the agent that served the click, as a rolling
// restart runs. The source's password comes in its own field; it lives in
// this agent's memory only while the run needs it (an online import until
// its cutover or abort, for its status and those two steps), is never put
// in a page, a log line or an event, and is masked out of every message
// the run shows. The dump goes to this host's temporary directory.

// importRun is an import this console runs, and what it said so far.
type importRun struct {
	Started time.Time
	Online  bool
	Source  string // the source's URL without its password
	Lines   []string
	Current string // the restore's step, shown in place
	Done    bool   // the copy (offline) or the start (online) ended
	Err     string
	// An online import, once started: its last status, and whether a
	// cutover or abort runs or ended it.
	Status    string
	Lag       string
	Busy      string // "cutover" or "abort" while one runs
	Finished  bool
	StatusErr string

	opts     importer.Options // with the password; never rendered
	password string
}

// Following reports whether the run is an online import that streams and
// waits for its cutover.
func (r *importRun) Following() bool {
	return r.Online && r.Done && r.Err == "" && !r.Finished
}

// importForm is what was typed in the import form, the password aside.
type importForm struct {
	Source                          string
	Online, NoRoles, Clean, FullIdn bool
}

// importClient is the API client an import runs with: the user's token,
// in process, and the fleet's CA to verify the cluster's primary with.
func (c *Console) importClient(rq *req) *api.Client {
	cl := c.client(rq)
	cl.CAFile = c.cfg.CAFile
	return cl
}

// importStatusEvery is how often an online import's status is read while
// it waits for its cutover: a query on the source and one on the primary.
const importStatusEvery = 3 * time.Second

// importFollowFor is how long this console keeps an online import's
// source password to follow it and cut it over.
const importFollowFor = 7 * 24 * time.Hour

// importAction starts an import, or cuts over or aborts the online import
// this console runs.
func (c *Console) importAction(w http.ResponseWriter, r *http.Request, rq *req, action string, fail func(string, error, *clusterData)) {
	name := r.PathValue("name")
	if rq.sess.readOnly() {
		// Refused before the agent connects anywhere on its behalf.
		fail("import", errors.New("a read-only token cannot import: sign in with the fleet's API token"), nil)
		return
	}
	var err error
	switch action {
	case "import":
		f := importForm{Source: strings.TrimSpace(r.PostFormValue("source")), Online: r.PostFormValue("mode") == "online",
			NoRoles: r.PostFormValue("no_roles") == "on", Clean: r.PostFormValue("clean") == "on", FullIdn: r.PostFormValue("full_identity") == "on"}
		from, password, ferr := sourceURL(f.Source, r.PostFormValue("password"))
		// What was typed goes back without a password, whichever field
		// held it.
		f.Source = withoutPassword(f.Source)
		if ferr != nil {
			fail("import", ferr, &clusterData{ImportForm: f})
			return
		}
		o := importer.Options{From: from, Jobs: 2, NoRoles: f.NoRoles, Clean: f.Clean, FullIdentity: f.FullIdn}
		if err = c.startImport(r.Context(), rq, name, o, password, f.Online); err != nil {
			fail("import", errors.New(mask(apiMessage(err), password)), &clusterData{ImportForm: f})
			return
		}
		flash(w, r, "Import started: its progress shows below.")
	case "import-cutover", "import-abort":
		if err = c.finishImport(rq, name, action, r.PostFormValue("lock_source") == "on"); err != nil {
			fail("import", err, nil)
			return
		}
		if action == "import-cutover" {
			flash(w, r, "Cutover started: it waits for the last change, then copies the sequences.")
		} else {
			flash(w, r, "Aborting the online import.")
		}
	}
	http.Redirect(w, r, "/clusters/"+url.PathEscape(name)+"#import", http.StatusSeeOther)
}

// sourceURL puts the password field into the source's URL; a password
// in the URL itself is taken when the field is empty.
func sourceURL(raw, password string) (from, pw string, err error) {
	if raw == "" {
		return "", "", errors.New("give the source's URL, postgres://USER@HOST:PORT/DATABASE")
	}
	if _, err := migrate.SplitURL(raw); err != nil {
		return "", "", fmt.Errorf("source URL: %w: give postgres://USER@HOST:PORT/DATABASE", err)
	}
	u, _ := url.Parse(raw)
	if u.User == nil || u.User.Username() == "" {
		return "", "", errors.New("source URL: name the user to connect as, postgres://USER@HOST:PORT/DATABASE")
	}
	if password == "" {
		password, _ = u.User.Password()
	}
	if password != "" {
		u.User = url.UserPassword(u.User.Username(), password)
	}
	return u.String(), password, nil
}

// withoutPassword is a typed source URL without its password, to show
// again in the form: "" when it does not parse.
func withoutPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

// mask takes a password out of a message.
func mask(s, password string) string {
	if password == "" {
		return s
	}
	return strings.ReplaceAll(s, password, "********")
}

// startImport checks the source as `create --import-from` does (so that
// an unreachable source or a wrong password is refused on the form, within
// seconds), then runs the import in the background.
func (c *Console) startImport(ctx context.Context, rq *req, name string, o importer.Options, password string, online bool) error {
	c.restartsMu.Lock()
	if run := c.imports[name]; run != nil && (!run.Done || run.Busy != "" || run.Following()) {
		c.restartsMu.Unlock()
		return fmt.Errorf("an import into %s runs from this console already: its progress is below", name)
	}
	c.restartsMu.Unlock()
	if err := importer.Probe(ctx, o, online); err != nil {
		return fmt.Errorf("nothing was imported: %w", err)
	}
	run := &importRun{Started: time.Now(), Online: online, Source: importer.Redact(o.From), opts: o, password: password}
	c.restartsMu.Lock()
	c.imports[name] = run
	c.restartsMu.Unlock()
	cl := c.importClient(rq)
	log := newImportLog(c, name, run)
	go func() {
		ictx, cancel := context.WithTimeout(context.Background(), 6*time.Hour)
		defer cancel()
		var err error
		if online {
			err = importer.Online(ictx, cl, name, o, log, log)
		} else {
			err = importer.Offline(ictx, cl, name, o, log, log)
		}
		c.restartsMu.Lock()
		run.Done, run.Current = true, ""
		if err != nil {
			run.Err = mask(apiMessage(err), password)
		}
		if !run.Following() {
			run.opts, run.password = importer.Options{}, ""
		}
		c.restartsMu.Unlock()
		if err != nil {
			c.log.Warn("console: import", "cluster", name, "source", run.Source, "err", mask(err.Error(), password))
		} else {
			c.log.Info("console: import done", "cluster", name, "source", run.Source, "online", online)
		}
		c.changed(name)
		c.progressed(name)
		if err == nil && online {
			c.followImport(cl, name, run)
		}
	}()
	c.log.Info("console: import started", "cluster", name, "source", run.Source, "online", online)
	return nil
}

// followImport reads an online import's status until it is cut over or
// aborted, and wakes the cluster's page when it changed.
func (c *Console) followImport(cl *api.Client, name string, run *importRun) {
	until := time.Now().Add(importFollowFor)
	for {
		if time.Now().After(until) {
			c.restartsMu.Lock()
			run.Finished, run.opts, run.password = true, importer.Options{}, ""
			run.Status, run.Lag = "", ""
			run.Lines = append(run.Lines, fmt.Sprintf("this console stopped following the import after %s and forgot the source's password: see it, cut it over or abort it with `pgfleet import %s --from URL --status`, `--cutover` or `--abort`", importFollowFor, name))
			c.restartsMu.Unlock()
			c.changed(name)
			c.progressed(name)
			return
		}
		c.restartsMu.Lock()
		o, pw, busy, done := run.opts, run.password, run.Busy, run.Finished
		c.restartsMu.Unlock()
		if done {
			return
		}
		if busy == "" {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			p, err := importer.Status(ctx, cl, name, o.From)
			cancel()
			var status, lag, serr string
			if err != nil {
				serr = mask(apiMessage(err), pw)
			} else {
				var b strings.Builder
				importer.PrintProgress(&b, p)
				status = strings.TrimSpace(b.String())
				lag = fleet.FormatBytes(p.LagBytes)
			}
			c.restartsMu.Lock()
			changed := run.Status != status || run.StatusErr != serr || run.Lag != lag
			if run.Busy == "" && !run.Finished {
				run.Status, run.StatusErr, run.Lag = status, serr, lag
			}
			c.restartsMu.Unlock()
			if changed {
				c.progressed(name)
			}
		}
		time.Sleep(importStatusEvery)
	}
}

// finishImport runs the cutover or the abort of the online import this
// console started.
func (c *Console) finishImport(rq *req, name, action string, lock bool) error {
	c.restartsMu.Lock()
	run := c.imports[name]
	if run == nil || !run.Following() {
		c.restartsMu.Unlock()
		return fmt.Errorf("no online import into %s waits for its cutover in this console: one started elsewhere is cut over or aborted with `pgfleet import %s --from URL --cutover` or `--abort`", name, name)
	}
	if run.Busy != "" {
		c.restartsMu.Unlock()
		return fmt.Errorf("the %s of this import runs already: its progress is below", run.Busy)
	}
	run.Busy = strings.TrimPrefix(action, "import-")
	o, pw := run.opts, run.password
	o.LockSource = lock
	o.Timeout = 10 * time.Minute
	c.restartsMu.Unlock()
	cl := c.importClient(rq)
	log := newImportLog(c, name, run)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		var err error
		if action == "import-cutover" {
			err = importer.Cutover(ctx, cl, name, o, log, log)
		} else {
			err = importer.Abort(ctx, cl, name, o.From, log)
		}
		c.restartsMu.Lock()
		run.Busy = ""
		if err != nil {
			log.add("the " + strings.TrimPrefix(action, "import-") + " failed: " + mask(apiMessage(err), pw))
		} else {
			run.Finished, run.Status, run.Lag = true, "", ""
			run.opts, run.password = importer.Options{}, ""
		}
		c.restartsMu.Unlock()
		if err != nil {
			c.log.Warn("console: import "+strings.TrimPrefix(action, "import-"), "cluster", name, "err", mask(err.Error(), pw))
		}
		c.changed(name)
		c.progressed(name)
	}()
	return nil
}

// importState is a copy of the last import into cluster name this
// console ran, or nil.
func (c *Console) importState(name string) *importRun {
	return jobCopy(c, c.imports, name, func(r importRun) importRun {
		r.Lines = slices.Clone(r.Lines)
		r.opts, r.password = importer.Options{}, ""
		return r
	})
}

// importLog takes an import's lines (a Liner: the restore's steps replace
// one another) and wakes the cluster's page with each; the source's
// password is masked out of them.
type importLog struct {
	lineWriter
	run *importRun
}

var _ importer.Liner = importLog{}

func newImportLog(c *Console, name string, run *importRun) importLog {
	return importLog{lineWriter{c: c, name: name, lines: &run.Lines, edit: func(s string) string { return mask(s, run.password) }}, run}
}

// add appends a line; the caller holds restartsMu.
func (l importLog) add(line string) {
	l.run.Lines = append(l.run.Lines, mask(line, l.run.password))
}

func (l importLog) ShowLine(s string) {
	l.c.restartsMu.Lock()
	l.run.Current = mask(s, l.run.password)
	l.c.restartsMu.Unlock()
	l.c.progressed(l.name)
}
