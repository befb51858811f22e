package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Moving a cluster's primary region from the console: the API client's
// Move (the loop `pgfleet move` runs, one step per request) in this
// agent, as a rolling restart runs, its lines shown live on the cluster's
// page. A move this console did not start (the CLI's, or one whose agent
// went away) shows from the cluster's record, and is resumed or reversed
// here by asking again.

// moveRun is a move this console runs, and what it said so far.
type moveRun struct {
	Started   time.Time
	To        string // the region, or "" for a reverse
	Lines     []string
	Done      bool
	Err       string
	first     chan struct{} // closed once the first step answered
	firstOnce *sync.Once
	cancel    context.CancelFunc // stops it, for a reverse
	ended     chan struct{}      // closed once it stopped
}

// firstStepWait is how long the request that starts a move waits for the
// first step's answer, so that a refusal shows on the form.
const firstStepWait = 10 * time.Second

// startMove starts a move of cluster name, or refuses at once what the
// API refuses at its first step.
func (c *Console) startMove(ctx context.Context, rq *req, name string, mr api.MoveRequest) error {
	c.restartsMu.Lock()
	if run := c.moves[name]; run != nil && !run.Done {
		if !mr.Reverse {
			c.restartsMu.Unlock()
			return fmt.Errorf("a move of %s is already running from this console: its progress is below", name)
		}
		// A reverse stops the move this console runs first, as a
		// second `pgfleet move --reverse` would make the first one stop.
		run.cancel()
		c.restartsMu.Unlock()
		select {
		case <-run.ended:
		case <-ctx.Done():
			return ctx.Err()
		}
		c.restartsMu.Lock()
	}
	mctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	run := &moveRun{Started: time.Now(), To: mr.Region, first: make(chan struct{}), firstOnce: &sync.Once{}, cancel: cancel, ended: make(chan struct{})}
	c.moves[name] = run
	c.restartsMu.Unlock()
	cl := c.client(rq)
	go func() {
		defer close(run.ended)
		defer cancel()
		err := cl.Move(mctx, name, mr, moveLog{lineWriter{c: c, name: name, lines: &run.Lines, edit: strings.TrimSpace}, run})
		c.restartsMu.Lock()
		run.Done = true
		if err != nil {
			run.Err = apiMessage(err)
		}
		c.restartsMu.Unlock()
		run.firstOnce.Do(func() { close(run.first) })
		if err != nil {
			c.log.Warn("console: move", "cluster", name, "err", err)
		} else {
			c.log.Info("console: move done", "cluster", name)
		}
		c.changed(name)
		c.progressed(name)
	}()
	select {
	case <-run.first:
	case <-time.After(firstStepWait):
		return nil
	case <-ctx.Done():
		return nil
	}
	c.restartsMu.Lock()
	defer c.restartsMu.Unlock()
	if run.Done && run.Err != "" && len(run.Lines) == 0 {
		// Refused at once: nothing to show below the form but the error.
		delete(c.moves, name)
		return errors.New(run.Err)
	}
	return nil
}

// moveState is a copy of the last move of cluster name this console ran,
// or nil.
func (c *Console) moveState(name string) *moveRun {
	return jobCopy(c, c.moves, name, func(r moveRun) moveRun {
		r.Lines = slices.Clone(r.Lines)
		return r
	})
}

// moveLog takes a move's lines, and tells startMove of the first.
type moveLog struct {
	lineWriter
	run *moveRun
}

func (l moveLog) Write(b []byte) (int, error) {
	n, err := l.lineWriter.Write(b)
	l.run.firstOnce.Do(func() { close(l.run.first) })
	return n, err
}

// moveAction is the cluster page's move and reverse buttons.
func (c *Console) moveAction(w http.ResponseWriter, r *http.Request, rq *req, action string, fail func(string, error, *clusterData)) {
	name := r.PathValue("name")
	mr := api.MoveRequest{Reverse: action == "move-reverse", DropOld: r.PostFormValue("drop_old") == "on"}
	if !mr.Reverse {
		mr.Region = strings.TrimSpace(r.PostFormValue("region"))
		if mr.Region == "" {
			fail("move", errors.New("choose the region the primary moves to"), nil)
			return
		}
		if err := fleet.ValidateRegion(mr.Region); err != nil {
			fail("move", err, nil)
			return
		}
	}
	if err := c.startMove(r.Context(), rq, name, mr); err != nil {
		fail("move", err, &clusterData{MoveForm: mr})
		return
	}
	if mr.Reverse {
		flash(w, r, "Reversing the move: its steps show below as they happen.")
	} else {
		flash(w, r, fmt.Sprintf("Moving the primary to %s: its steps show below as they happen.", mr.Region))
	}
	http.Redirect(w, r, "/clusters/"+url.PathEscape(name)+"#move", http.StatusSeeOther)
}
