package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/backup"
)

// cannedAPI answers "METHOD /path" with a status and a JSON body, 404 for
// anything else, and records the bodies it was sent.
type cannedAPI struct {
	answers map[string]canned
	mu      sync.Mutex
	sent    map[string][]byte
}

type canned struct {
	status int
	body   any
}

func (f *cannedAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	b := new(bytes.Buffer)
	b.ReadFrom(r.Body)
	f.mu.Lock()
	if f.sent == nil {
		f.sent = map[string][]byte{}
	}
	f.sent[key] = b.Bytes()
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	a, ok := f.answers[key]
	if !ok {
		a = canned{http.StatusNotFound, api.ErrorView{Error: "canned API: no " + key}}
	}
	w.WriteHeader(a.status)
	json.NewEncoder(w).Encode(a.body)
}

// help runs pgfleet args... --help without a fleet.
func help(t *testing.T, args ...string) string {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append(args, "--help"))
	if err := root.Execute(); err != nil {
		t.Fatalf("pgfleet %s --help: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

// TestHelpAsANewUserReadsIt checks the help texts a new user found wrong:
// flags named after a quoted command, client flags on the agent, and two
// defaults for restore --ha.
func TestHelpAsANewUserReadsIt(t *testing.T) {
	for _, args := range [][]string{{"status"}, {"create"}, {"users", "create"}, {"attach"}, {"agent"}, {"backup", "create"}} {
		h := help(t, args...)
		for _, line := range strings.Split(h, "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && strings.HasPrefix(f[0], "--") && f[1] == "pgfleet" {
				t.Errorf("pgfleet %s --help names a flag's value after a command: %q", strings.Join(args, " "), line)
			}
		}
	}
	if h := help(t, "status"); !strings.Contains(h, "--api string") || !strings.Contains(h, "--token string") {
		t.Errorf("status --help lacks the API flags:\n%s", h)
	}
	for _, args := range [][]string{{"agent"}, {"dev", "up"}, {"version"}} {
		if h := help(t, args...); strings.Contains(h, "--api string") || strings.Contains(h, "--token string") {
			t.Errorf("pgfleet %s --help shows the API client's flags, which do not apply:\n%s", strings.Join(args, " "), h)
		}
	}
	root := newRootCmd()
	root.SetOut(new(bytes.Buffer))
	root.SetArgs([]string{"agent", "--api", "127.0.0.1:7480"})
	var ue usageError
	if err := root.Execute(); !errors.As(err, &ue) || !strings.Contains(err.Error(), "does not apply") {
		t.Errorf("pgfleet agent --api: %v; want a usage error saying it does not apply", err)
	}
	for _, line := range strings.Split(help(t, "restore"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--ha ") && (strings.Contains(line, "(default 1)") || !strings.Contains(line, "the source's")) {
			t.Errorf("restore --help: %q; want one default, the source's", line)
		}
	}
}

func TestRestoreOfADestroyedCluster(t *testing.T) {
	f := &cannedAPI{answers: map[string]canned{
		"GET /v1/clusters/old": {http.StatusNotFound, api.ErrorView{Error: `cluster "old": not found`}},
		"GET /v1/retired/old":  {http.StatusOK, api.RetiredView{Name: "old", PrimaryRegion: "ams", HA: 2, Replicas: []string{"syd"}}},
		"POST /v1/clusters":    {http.StatusCreated, api.ClusterView{Name: "new", Port: 6020}},
	}}
	if _, err := runCLI(t, f, "restore", "old", "--into", "new", "--latest"); err != nil {
		t.Fatalf("restore of a destroyed cluster without --primary-region: %v", err)
	}
	var req api.CreateRequest
	if err := json.Unmarshal(f.sent["POST /v1/clusters"], &req); err != nil {
		t.Fatal(err)
	}
	if req.PrimaryRegion != "ams" || req.HA == nil || *req.HA != 2 || strings.Join(req.Replicas, ",") != "syd" {
		t.Errorf("restore sent primary region %q, ha %v, replicas %v; want the destroyed cluster's ams, 2, syd", req.PrimaryRegion, req.HA, req.Replicas)
	}

	_, err := runCLI(t, &cannedAPI{}, "restore", "never", "--into", "new", "--latest")
	if err == nil || !strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "no longer") {
		t.Errorf("restore of a name that never existed: %v; want it called one that does not exist", err)
	}
	_, err = runCLI(t, &cannedAPI{}, "restore", "old", "--into", "new", "--time", "yesterday")
	if err == nil || strings.Contains(err.Error(), "2006") || !strings.Contains(err.Error(), "RFC 3339") {
		t.Errorf("restore --time yesterday: %v; want an example of a time, not Go's layout", err)
	}
}

func TestBackupCreateTookAsListed(t *testing.T) {
	start := time.Date(2026, 11, 25, 5, 54, 43, 614e6, time.UTC)
	m := backup.Manifest{ID: "20261125T055443.614Z", Cluster: "db", StartTime: start, StopTime: start.Add(312 * time.Millisecond), RawBytes: 22 << 20, StoredBytes: 1 << 20}
	f := &cannedAPI{answers: map[string]canned{
		"POST /v1/clusters/db/backups": {http.StatusAccepted, api.BackupRequestView{ID: m.ID, Member: "db-2"}},
		"GET /v1/clusters/db/backups":  {http.StatusOK, api.BackupsView{Store: "file:///b", Backups: []backup.Manifest{m}}},
	}}
	created, err := runCLI(t, f, "backup", "create", "db", "--wait")
	if err != nil {
		t.Fatal(err)
	}
	listed, err := runCLI(t, f, "backup", "list", "db")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(created, "done in 300ms") || !strings.Contains(listed, "300ms") {
		t.Errorf("backup create says:\n%s\nbackup list says:\n%s\nwant the same 300ms in both", created, listed)
	}
}

func TestProgressColumns(t *testing.T) {
	ms := []api.MemberView{
		{ID: "shop-before-1", Role: "primary", Host: "iad-1"},
		{ID: "shop-before-12", Role: "replica", Host: "ams-long-host-1"},
	}
	w := memberWidths(ms)
	var lines []string
	for _, m := range ms {
		lines = append(lines, strings.TrimRight(formatProgress(w, m, "streaming"), "\n"))
	}
	if a, b := strings.Index(lines[0], "streaming"), strings.Index(lines[1], "streaming"); a != b {
		t.Errorf("progress lines are not in columns:\n%s", strings.Join(lines, "\n"))
	}
}

func TestVersionSaysWhatItIs(t *testing.T) {
	var out bytes.Buffer
	printVersions(&out)
	for _, want := range []string{"pgfleet ", "built with go1.", "PostgreSQL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("version output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestNotFoundInOneWording: whatever the command, a cluster that never was
// "does not exist", a destroyed one says where its backups are, and a 404
// about something of a live cluster (a member) passes as the API said it.
func TestNotFoundInOneWording(t *testing.T) {
	gone := &cannedAPI{answers: map[string]canned{
		"GET /v1/retired/old": {http.StatusOK, api.RetiredView{Name: "old", PrimaryRegion: "iad", HA: 1, Deleted: time.Now()}},
	}}
	for _, args := range [][]string{{"status", "nope"}, {"events", "nope"}, {"url", "nope"}, {"destroy", "nope", "--yes"}, {"backup", "list", "nope"}, {"switchover", "nope"}, {"set", "nope", "--sync", "on"}} {
		_, err := runCLI(t, gone, args...)
		if err == nil || err.Error() != "cluster nope does not exist: `pgfleet list` shows the clusters" {
			t.Errorf("pgfleet %s: %v; want the one wording of a cluster that does not exist", strings.Join(args, " "), err)
		}
	}
	if _, err := runCLI(t, gone, "events", "old"); err == nil || !strings.Contains(err.Error(), "cluster old was destroyed on") || !strings.Contains(err.Error(), "pgfleet backup list old") {
		t.Errorf("events of a destroyed cluster: %v; want it said destroyed, with its backups", err)
	}
	live := &cannedAPI{answers: map[string]canned{
		"GET /v1/clusters/db":     {http.StatusOK, api.ClusterView{Name: "db"}},
		"GET /v1/clusters/db/url": {http.StatusNotFound, api.ErrorView{Error: "cluster db has no member \"db-9\": its members are db-1"}},
	}}
	if _, err := runCLI(t, live, "url", "db", "--member", "db-9"); err == nil || !strings.Contains(err.Error(), "has no member") {
		t.Errorf("url of a missing member: %v; want the API's answer", err)
	}
}
