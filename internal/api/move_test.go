package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// TestClientMoveAsks checks what Client.Move asks from step to step: a
// reverse whose first step was not written (the cluster changed
// meanwhile) is asked again as a reverse; once written, the move under
// way is resumed by its region, never reversed twice.
func TestClientMoveAsks(t *testing.T) {
	forward := &fleet.Move{From: "a", To: "b"}
	back := &fleet.Move{From: "b", To: "a"}
	answers := []MoveView{
		{Action: fleet.MoveWait, Step: "move cluster db: it changed meanwhile", Move: forward},
		{Action: fleet.MoveBegin, Step: "move db from b to a: its members there are standbys already", Move: back},
		{Action: fleet.MoveFlip, Step: "a is the primary region of db", Move: back},
		{Action: fleet.MoveFinish, Step: "db-3, db-4 removed; the move of db to a is done", Done: true, Cluster: ClusterView{PrimaryRegion: "a", Primary: "db-1"}},
	}
	var asked []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req MoveRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			t.Errorf("decode %s %s: %v", r.Method, r.URL.Path, err)
		}
		asked = append(asked, fmt.Sprintf("region=%q reverse=%v", req.Region, req.Reverse))
		writeJSON(w, http.StatusOK, answers[min(len(asked), len(answers))-1])
	})
	var out strings.Builder
	if err := NewInProcessClient(h, "pgf_x").Move(context.Background(), "db", MoveRequest{Reverse: true}, &out); err != nil {
		t.Fatalf("Move: %v", err)
	}
	want := []string{`region="" reverse=true`, `region="" reverse=true`, `region="a" reverse=false`, `region="a" reverse=false`}
	if strings.Join(asked, "; ") != strings.Join(want, "; ") {
		t.Errorf("Move asked %v; want %v", asked, want)
	}
	if !strings.Contains(out.String(), "db moved to a") || strings.Count(out.String(), "\n") != 5 {
		t.Errorf("Move printed:\n%s\nwant a line per step and the end", out.String())
	}
}
