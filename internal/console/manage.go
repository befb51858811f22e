package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// The cluster page's day-two actions: its shape (read replicas, members,
// HA size), its databases and apps, its settings and the rolling restart.
// Each is the API call the CLI makes, and the orchestrations the CLI runs
// on top of the API (a removal asked again while its members leave the
// sync set, a rolling restart) are the API client's own, run here with an
// in-process client (api.NewInProcessClient): one behaviour, whichever a
// person uses.

// client is an API client that calls this agent's API in process with the
// signed-in user's token.
func (c *Console) client(rq *req) *api.Client {
	return api.NewInProcessClient(c.cfg.API, rq.sess.Token)
}

// manage runs the day-two action named action; it reports false for an
// action it does not know.
func (c *Console) manage(w http.ResponseWriter, r *http.Request, rq *req, action string, fail func(string, error, *clusterData)) bool {
	name := r.PathValue("name")
	ctx, base := r.Context(), "/v1/clusters/"+url.PathEscape(name)
	back := "/clusters/" + url.PathEscape(name)
	form := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	switch action {
	case "import", "import-cutover", "import-abort":
		c.importAction(w, r, rq, action, fail)
		return true
	case "move", "move-reverse":
		c.moveAction(w, r, rq, action, fail)
		return true
	case "replica-add":
		region := form("region")
		if region == "" {
			fail("replica", errors.New("choose the region of the new replica"), nil)
			return true
		}
		v, err := c.client(rq).AddReplica(ctx, name, region)
		if err != nil {
			fail("replica", err, nil)
			return true
		}
		flash(w, r, v.Summary()+".")
		back += "#shape"
	case "member-remove":
		id := form("member")
		switch {
		case id == "":
			fail("remove", errors.New("choose the member to remove"), nil)
			return true
		case r.PostFormValue("confirm") != "on":
			fail("remove", fmt.Errorf("removing %s deletes its data: tick the box to confirm; nothing was removed", id), &clusterData{Remove: id})
			return true
		}
		cl := c.client(rq)
		v, err := api.UntilOutOfSync(func() (api.ShapeView, error) { return cl.RemoveMember(ctx, name, id) }, nil)
		if err != nil {
			fail("remove", leavingHint(err), &clusterData{Remove: id})
			return true
		}
		flash(w, r, v.Summary()+".")
		back += "#shape"
	case "ha":
		size, err := strconv.Atoi(form("size"))
		if err != nil {
			fail("ha", fmt.Errorf("%q is not a number: give how many members the primary region has, 1 to %d", form("size"), fleet.MaxHA), nil)
			return true
		}
		cl := c.client(rq)
		v, err := api.UntilOutOfSync(func() (api.ShapeView, error) { return cl.SetHA(ctx, name, size) }, nil)
		if err != nil {
			fail("ha", leavingHint(err), nil)
			return true
		}
		flash(w, r, v.Summary()+".")
		back += "#shape"
	case "db-create":
		db := form("database")
		if err := c.call.do(ctx, rq.sess.Token, "POST", base+"/databases", api.DatabaseRequest{Name: db}, nil); err != nil {
			fail("databases", err, &clusterData{DBForm: db})
			return true
		}
		flash(w, r, fmt.Sprintf("Database %s created: every user of the cluster can connect to it.", db))
		back += "#databases"
	case "db-delete":
		db, typed := form("database"), form("confirm")
		if db == "" {
			fail("databases", errors.New("choose the database to delete"), nil)
			return true
		}
		if typed != db {
			fail("databases", fmt.Errorf("deleting database %s deletes all of its data: type its name to confirm; nothing was deleted", db), nil)
			return true
		}
		if err := c.call.do(ctx, rq.sess.Token, "DELETE", base+"/databases/"+url.PathEscape(db)+"?confirm="+url.QueryEscape(typed), nil, nil); err != nil {
			fail("databases", err, nil)
			return true
		}
		flash(w, r, fmt.Sprintf("Database %s deleted.", db))
		back += "#databases"
	case "app-attach":
		app := form("app")
		var v api.AttachView
		if err := c.call.do(ctx, rq.sess.Token, "POST", base+"/apps", api.AttachRequest{App: app, Region: form("region")}, &v); err != nil {
			fail("apps", err, &clusterData{AppForm: app})
			return true
		}
		// No redirect: the password in the URLs is shown on this answer
		// only.
		c.showCluster(w, r, rq, http.StatusOK, &clusterData{Attached: &v})
		return true
	case "app-detach":
		app, drop := form("app"), r.PostFormValue("drop_data") == "on"
		path := base + "/apps/" + url.PathEscape(app)
		if drop {
			if typed := form("confirm"); typed != app {
				fail("apps", fmt.Errorf("detaching %s with its data deletes database %s: type the app's name to confirm; nothing was changed", app, app), nil)
				return true
			}
			path += "?drop_data=true&confirm=" + url.QueryEscape(app)
		}
		if err := c.call.do(ctx, rq.sess.Token, "DELETE", path, nil, nil); err != nil {
			fail("apps", err, nil)
			return true
		}
		if drop {
			flash(w, r, fmt.Sprintf("App %s detached: database %s and role %s deleted.", app, app, app))
		} else {
			flash(w, r, fmt.Sprintf("App %s detached: it can no longer log in; database %s is kept (attach it again to give it a new password).", app, app))
		}
		back += "#apps"
	case "config-set", "config-reset":
		cf := configForm{Name: form("setting"), Value: r.PostFormValue("value"), Restart: r.PostFormValue("restart") == "on"}
		req := api.ConfigRequest{Restart: cf.Restart}
		if action == "config-reset" {
			req.Reset = []string{cf.Name}
		} else {
			if cf.Name == "" {
				fail("config", errors.New("name the setting to change, e.g. work_mem"), &clusterData{ConfigForm: cf})
				return true
			}
			req.Set = map[string]string{cf.Name: cf.Value}
		}
		if err := c.call.do(ctx, rq.sess.Token, "PATCH", base+"/config", req, nil); err != nil {
			if action == "config-reset" {
				cf = configForm{}
			}
			fail("config", err, &clusterData{ConfigForm: cf})
			return true
		}
		msg := "Saved: every member reloads within a few seconds."
		if action == "config-reset" {
			msg = cf.Name + " is back to pgfleet's default: every member reloads within a few seconds."
		}
		if cf.Restart {
			if c.startRestart(name, rq) {
				msg += " A rolling restart applies what needs a restart: its progress is below."
			} else {
				msg += " A rolling restart is already running from this console: it applies the change when it restarts each member."
			}
		}
		flash(w, r, msg)
		back += "#config"
	case "restart":
		if !c.startRestart(name, rq) {
			fail("restart", fmt.Errorf("a rolling restart of %s is already running from this console", name), nil)
			return true
		}
		flash(w, r, "Rolling restart started: one member at a time, the primary last after a switchover.")
		back += "#config"
	default:
		return false
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
	return true
}

// leavingHint adds what to do to the API's answer that members are still
// leaving the sync set, after the CLI's minute of asking again.
func leavingHint(err error) error {
	if strings.Contains(apiMessage(err), api.LeavingSyncSet) {
		return fmt.Errorf("%s. Nothing was removed yet: the primary keeps a standby in its sync set until another one holds every acknowledged commit; press the button again in a minute", strings.TrimSuffix(apiMessage(err), "."))
	}
	return err
}

// configForm is what was typed in the settings form.
type configForm struct {
	Name, Value string
	Restart     bool
}

// readManaged reads what the page shows of a cluster from its primary,
// when the page is: databases and settings live in postgres, not in the
// store, so they are not live.
func (c *Console) readManaged(ctx context.Context, rq *req, d *clusterData) {
	base := "/v1/clusters/" + url.PathEscape(d.V.Name)
	if err := c.call.do(ctx, rq.sess.Token, "GET", base+"/databases", nil, &d.Databases); err != nil {
		d.DBErr = apiMessage(err)
	}
	if err := c.call.do(ctx, rq.sess.Token, "GET", base+"/config", nil, &d.Config); err != nil {
		d.ConfigErr = apiMessage(err)
	}
	for _, u := range d.Users {
		if u.Kind == string(postgres.KindApp) {
			d.Apps = append(d.Apps, u.Name)
		}
	}
	for _, r := range d.Regions {
		if r != d.V.PrimaryRegion && !slices.Contains(d.V.Replicas, r) {
			d.ReplicaRegions = append(d.ReplicaRegions, r)
		}
		if r != d.V.PrimaryRegion {
			d.MoveRegions = append(d.MoveRegions, r)
		}
	}
	for _, m := range d.V.Members {
		if m.ID != d.V.Primary {
			d.Removable = append(d.Removable, m)
		}
	}
}

// restartRun is a rolling restart this console runs, and what it said so
// far.
type restartRun struct {
	Started time.Time
	Lines   []string
	Done    bool
	Err     string
}

// startRestart starts a rolling restart of cluster name with the user's
// token, unless one runs from this console already. It runs on after the
// request, bounded as `pgfleet restart` is by default; its progress shows
// on the cluster's page, and each step is in the cluster's events.
func (c *Console) startRestart(name string, rq *req) bool {
	c.restartsMu.Lock()
	defer c.restartsMu.Unlock()
	if run := c.restarts[name]; run != nil && !run.Done {
		return false
	}
	run := &restartRun{Started: time.Now()}
	c.restarts[name] = run
	cl := c.client(rq)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		err := cl.RollingRestart(ctx, name, lineWriter{c: c, name: name, lines: &run.Lines})
		c.restartsMu.Lock()
		run.Done = true
		if err != nil {
			run.Err = apiMessage(err)
		}
		c.restartsMu.Unlock()
		if err != nil {
			c.log.Warn("console: rolling restart", "cluster", name, "err", err)
		} else {
			c.log.Info("console: rolling restart done", "cluster", name)
		}
		c.changed(name)
	}()
	c.log.Info("console: rolling restart started", "cluster", name)
	return true
}

// restartState is a copy of the last rolling restart of cluster name this
// console ran, or nil.
func (c *Console) restartState(name string) *restartRun {
	return jobCopy(c, c.restarts, name, func(r restartRun) restartRun {
		r.Lines = slices.Clone(r.Lines)
		return r
	})
}
