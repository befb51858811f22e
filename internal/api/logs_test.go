package api

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

func TestParseLogQuery(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		query string
		want  logQuery
		err   string
	}{
		{query: "", want: logQuery{}},
		{query: "member=demo-2&since=10m&follow=true", want: logQuery{member: "demo-2", since: now.Add(-10 * time.Minute), follow: true}},
		{query: "since=2026-01-02T14:00:00Z&follow=false", want: logQuery{since: time.Date(2026, 1, 2, 14, 0, 0, 0, time.UTC)}},
		{query: "since=2026-01-02T16:00:00%2B02:00", want: logQuery{since: time.Date(2026, 1, 2, 14, 0, 0, 0, time.UTC)}},
		{query: "since=yesterday", err: `since "yesterday" is neither a duration nor a time`},
		{query: "since=-5m", err: `since "-5m" is negative`},
		{query: "since=2026-01-02", err: "neither a duration nor a time"},
		{query: "member=shop-1", err: `member id "shop-1" is not valid`},
		{query: "member=", err: "member id is empty"},
		{query: "follow=maybe", err: `follow="maybe" is not valid`},
		{query: "follow=1&follow=0", err: "given 2 times"},
		{query: "tail=10", err: `unknown parameter "tail"`},
	} {
		got, err := parseLogQuery(tc.query, "demo", now)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseLogQuery(%q) error = %v, want one with %q", tc.query, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("parseLogQuery(%q) error = %v", tc.query, err)
		case tc.err == "" && (got.member != tc.want.member || !got.since.Equal(tc.want.since) || got.follow != tc.want.follow):
			t.Errorf("parseLogQuery(%q) = %+v, want %+v", tc.query, got, tc.want)
		}
	}
}

func TestLogMember(t *testing.T) {
	c := store.ClusterState{
		Spec:    fleet.ClusterSpec{Name: "demo"},
		Members: []fleet.MemberSpec{{ID: "demo-1", Host: "iad-1"}, {ID: "demo-2", Host: "iad-2"}},
		Leader:  "demo-2",
	}
	for _, tc := range []struct {
		leader, member, want string
		code                 int
		msg                  string
	}{
		{leader: "demo-2", want: "demo-2"},
		{leader: "demo-2", member: "demo-1", want: "demo-1"},
		{leader: "", member: "demo-1", want: "demo-1"},
		{leader: "", code: http.StatusServiceUnavailable, msg: "cluster demo has no primary right now: name a member with --member (demo-1, demo-2)"},
		{leader: "demo-2", member: "demo-3", code: http.StatusNotFound, msg: "cluster demo has no member demo-3: its members are demo-1, demo-2"},
	} {
		c.Leader = tc.leader
		m, code, msg := logMember(c, tc.member)
		if m.ID != tc.want && tc.code == 0 || code != tc.code || msg != tc.msg {
			t.Errorf("logMember(leader %q, %q) = %s, %d, %q; want %s, %d, %q", tc.leader, tc.member, m.ID, code, msg, tc.want, tc.code, tc.msg)
		}
	}
}

// TestReadLogStreamIdle: a stream that stops sending, without closing,
// is given up after the idle limit; heartbeats keep it open.
func TestReadLogStreamIdle(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, `{"time":"2026-01-02T15:04:05Z","member":"demo-1","source":"postgres","text":"a"}`+"\n")
		for range 3 {
			io.WriteString(pw, "{}\n")
		}
		// then nothing, and no close: a host gone from the network
	}()
	var got []string
	start := time.Now()
	err := readLogStream(pr, 100*time.Millisecond, func(l LogLine) error {
		if l.heartbeat() {
			got = append(got, "heartbeat")
		} else {
			got = append(got, l.Text)
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "no answer for 100ms") {
		t.Errorf("readLogStream of a stalled stream = %v, want no answer for 100ms", err)
	}
	if strings.Join(got, ",") != "a,heartbeat,heartbeat,heartbeat" {
		t.Errorf("readLogStream gave %v, want the line and three heartbeats", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("readLogStream gave up after %s, want about 100ms", d)
	}

	err = readLogStream(io.NopCloser(strings.NewReader(`{"error":"host gone"}`+"\n")), 0, func(l LogLine) error {
		got = append(got, l.Error)
		return nil
	})
	if err != nil || got[len(got)-1] != "host gone" {
		t.Errorf("readLogStream of an ended stream = %v, last %q; want nil after the error line", err, got[len(got)-1])
	}
}

// TestFollowOutlivesServerTimeouts: a followed log is a request without
// end, on a server whose timeouts end every other request; over HTTP/2, as
// the CLI speaks to agents, and HTTP/1.1.
func TestFollowOutlivesServerTimeouts(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			const n = 8
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sw := startStream(w, true)
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for i := range n {
					<-tick.C
					if err := sw.write(LogLine{Time: time.Now(), Text: fmt.Sprint(i)}); err != nil {
						return
					}
				}
			}))
			srv.EnableHTTP2 = h2
			srv.Config.ReadTimeout = 250 * time.Millisecond
			srv.Config.WriteTimeout = 250 * time.Millisecond
			srv.StartTLS()
			defer srv.Close()
			resp, err := srv.Client().Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := resp.ProtoMajor == 2; got != h2 {
				t.Fatalf("answered over %s", resp.Proto)
			}
			var got []string
			err = readLogStream(resp.Body, 5*time.Second, func(l LogLine) error { got = append(got, l.Text); return nil })
			if err != nil || len(got) != n {
				t.Errorf("followed %d lines over %s in %s with timeouts of 250ms: %v, %v; want %d", len(got), resp.Proto, 800*time.Millisecond, got, err, n)
			}
		})
	}
}
