package console

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// livePage is what a page's live stream sends: the page's regions (each a
// template named as the element it fills), rebuilt when the hub says one
// of its topics changed.
type livePage struct {
	page    string // the template set the regions are in
	topics  func(name string) []string
	build   func(c *Console, ctx context.Context, rq *req, name string) (any, error)
	regions []string
}

var livePages = map[string]livePage{
	"fleet": {
		page:    "fleet",
		topics:  func(string) []string { return []string{topicHosts, topicRTT, topicClusters} },
		build:   (*Console).buildFleet,
		regions: []string{"fleet-hosts", "fleet-rtt"},
	},
	"clusters": {
		page:    "clusters",
		topics:  func(string) []string { return []string{topicClusters} },
		build:   (*Console).buildClusters,
		regions: []string{"clusters-table"},
	},
	"cluster": {
		page: "cluster",
		topics: func(name string) []string {
			return []string{topicCluster + "/" + name, topicEvents + "/" + name, topicBackups + "/" + name}
		},
		build:   (*Console).buildCluster,
		regions: []string{"cluster-status", "cluster-members", "cluster-switchover", "cluster-backups", "cluster-events", "cluster-restart", "cluster-import", "cluster-move"},
	},
}

// keepAlive is how often an idle stream sends a comment, so that proxies
// and the browser see it alive.
const keepAlive = 25 * time.Second

// live streams a page's regions as Server-Sent Events: once at the start,
// then whenever what they show changed. A region is sent only when its
// HTML differs from what the page has. The stream ends when the session
// does.
func (c *Console) live(w http.ResponseWriter, r *http.Request, rq *req) {
	q := r.URL.Query()
	lp, ok := livePages[q.Get("page")]
	if !ok {
		http.Error(w, "unknown page", http.StatusNotFound)
		return
	}
	name := q.Get("name")
	rc := http.NewResponseController(w)
	// The server's read and write timeouts bound a request; a stream
	// extends its own deadlines as it goes.
	_ = rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	sub, cancel := c.hub.subscribe(lp.topics(name)...)
	defer cancel()
	ctx := r.Context()
	expires := time.NewTimer(time.Until(time.Unix(rq.sess.Seen, 0).Add(IdleTimeout)))
	defer expires.Stop()
	ping := time.NewTicker(keepAlive)
	defer ping.Stop()
	sent := map[string]string{}
	created := q.Get("created") == "1"

	write := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := w.Write([]byte(s)); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	send := func() bool {
		data, err := lp.build(c, ctx, rq, name)
		if err != nil {
			if isStatus(err, http.StatusNotFound) {
				return write("event: gone\ndata: " + oneLine(apiMessage(err)) + "\n\n")
			}
			return write("event: trouble\ndata: " + oneLine(apiMessage(err)) + "\n\n")
		}
		if d, ok := data.(*clusterData); ok {
			d.Created = created
		}
		pd := pageData{Host: c.cfg.Host, Region: c.cfg.Region, SignedIn: true, ReadOnly: rq.sess.readOnly(), CSRF: rq.csrf, Now: time.Now(), Data: data}
		var out strings.Builder
		for _, region := range lp.regions {
			var buf bytes.Buffer
			if err := c.pages[lp.page].ExecuteTemplate(&buf, region, pd); err != nil {
				c.log.Error("console: render live region", "region", region, "err", err)
				continue
			}
			html := buf.String()
			if sent[region] == html {
				continue
			}
			sent[region] = html
			fmt.Fprintf(&out, "event: %s\n", region)
			for _, line := range strings.Split(html, "\n") {
				fmt.Fprintf(&out, "data: %s\n", line)
			}
			out.WriteString("\n")
		}
		if out.Len() == 0 {
			return true
		}
		return write(out.String())
	}
	if !write("retry: 3000\n\n") || !send() {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-expires.C:
			write("event: expired\ndata: your session ended\n\n")
			return
		case <-ping.C:
			if !write(": ping\n\n") {
				return
			}
		case <-sub.c:
			if c.hub.isRevoked(rq.sess.ID) {
				write("event: expired\ndata: you signed out\n\n")
				return
			}
			if !send() {
				return
			}
		}
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
