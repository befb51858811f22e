package console

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

// How long a shared read may serve pages when the hub saw no change: the
// watch wakes pages on every change, so this only bounds how long a
// rotated token still reads, and how stale a page can be while the watch
// is down. Backup lists read the object store, which no watch covers; a
// new backup also changes the cluster's backup key, which the hub sees.
const (
	stateMaxAge   = 2 * time.Second
	backupsMaxAge = time.Minute
)

func (c *Console) read(ctx context.Context, rq *req, path string, maxAge time.Duration, out any, topics ...string) error {
	code, body, err := c.cache.get(ctx, c.hub, c.call, rq.sess.Token, path, maxAge, topics...)
	if err != nil {
		return err
	}
	return decodeAnswer(code, body, out)
}

func (c *Console) hosts(ctx context.Context, rq *req) ([]api.HostView, error) {
	var hs []api.HostView
	err := c.read(ctx, rq, "/v1/hosts", stateMaxAge, &hs, topicHosts)
	if err == nil {
		c.noteHosts(hs)
	}
	return hs, err
}

func (c *Console) clusters(ctx context.Context, rq *req) ([]api.ClusterView, error) {
	var cs []api.ClusterView
	err := c.read(ctx, rq, "/v1/clusters", stateMaxAge, &cs, topicClusters)
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	return cs, err
}

func (c *Console) cluster(ctx context.Context, rq *req, name string) (api.ClusterView, error) {
	var v api.ClusterView
	err := c.read(ctx, rq, "/v1/clusters/"+url.PathEscape(name), stateMaxAge, &v, topicCluster+"/"+name)
	return v, err
}

func (c *Console) events(ctx context.Context, rq *req, name string) ([]fleet.Event, error) {
	var evs []fleet.Event
	err := c.read(ctx, rq, "/v1/clusters/"+url.PathEscape(name)+"/events?limit=30", stateMaxAge, &evs, topicEvents+"/"+name)
	// Newest first, as a history is read.
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.After(evs[j].Time) })
	return evs, err
}

func (c *Console) backups(ctx context.Context, rq *req, name string) (api.BackupsView, error) {
	var v api.BackupsView
	err := c.read(ctx, rq, "/v1/clusters/"+url.PathEscape(name)+"/backups", backupsMaxAge, &v, topicBackups+"/"+name)
	sort.Slice(v.Backups, func(i, j int) bool { return v.Backups[i].StopTime.After(v.Backups[j].StopTime) })
	return v, err
}

func (c *Console) rtts(ctx context.Context, rq *req) ([]api.RTTView, error) {
	var rs []api.RTTView
	err := c.read(ctx, rq, "/v1/rtt", stateMaxAge, &rs, topicRTT)
	return rs, err
}

// clusterURL reads a connection URL; never cached, as it carries the
// superuser's password.
func (c *Console) clusterURL(ctx context.Context, rq *req, name string, q url.Values) (api.URLView, error) {
	var v api.URLView
	path := "/v1/clusters/" + url.PathEscape(name) + "/url"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	err := c.call.do(ctx, rq.sess.Token, "GET", path, nil, &v)
	return v, err
}

// urlRow is one connection URL of a cluster page.
type urlRow struct {
	What string // what the URL reaches
	URL  string
	Err  string
}

// clusterURLs are the URLs a cluster page offers: writes through the
// proxies, reads from the nearest replica in each region with live
// hosts, and every member directly.
func (c *Console) clusterURLs(ctx context.Context, rq *req, v api.ClusterView, regions []string) []urlRow {
	rows := []urlRow{}
	add := func(what string, q url.Values) {
		u, err := c.clusterURL(ctx, rq, v.Name, q)
		if err != nil {
			rows = append(rows, urlRow{What: what, Err: apiMessage(err)})
			return
		}
		rows = append(rows, urlRow{What: what, URL: u.URL})
	}
	add(fmt.Sprintf("App (writes): the primary, through the routing proxies of %s", v.PrimaryRegion), nil)
	for _, r := range regions {
		add("Reads in "+r+": the nearest member fit for reads", url.Values{"region": {r}, "replica": {"true"}})
	}
	add("Direct: every member's postgres, no proxy", url.Values{"direct": {"true"}})
	return rows
}
