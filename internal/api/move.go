package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

// A move of a cluster's primary region is a series of steps, each decided
// by fleet.NextMoveStep from what the store holds and written with a
// compare-and-swap on what it was decided on. The API takes one step per
// request; the client (Client.Move) asks until the move is done, so a
// move whose client was killed is resumed by asking again, from any agent,
// and two clients moving one cluster cannot both apply a step decided on
// the same state.

// MoveRequest asks for the next step of a move of a cluster's primary
// region to Region, or of the reverse of the move under way.
type MoveRequest struct {
	Region  string `json:"region,omitempty"`
	Reverse bool   `json:"reverse,omitempty"`
	DropOld bool   `json:"drop_old,omitempty"`
}

// MoveView answers a step: what it did or waits for, the move as it is
// now (nil once it ended) and the cluster.
type MoveView struct {
	Action  fleet.MoveAction `json:"action"`
	Step    string           `json:"step"`
	Done    bool             `json:"done"`
	Move    *fleet.Move      `json:"move,omitempty"`
	Cluster ClusterView      `json:"cluster"`
}

func (s *Server) moveRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/clusters/{name}/move", s.auth(s.move))
}

func (s *Server) move(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req MoveRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Region != "" {
		if err := fleet.ValidateRegion(req.Region); err != nil {
			writeError(w, http.StatusBadRequest, "--primary-region: "+err.Error())
			return
		}
	}
	ctx := r.Context()
	c, hosts, load, err := s.clusterHosts(ctx, name)
	if err != nil {
		s.shapeError(w, err)
		return
	}
	step, err := fleet.NextMoveStep(fleet.MoveInput{
		Spec: c.Spec, Members: c.Members, Status: c.Status, Leader: c.Leader, Sync: c.Sync,
		Switchover: c.Switchover, Hosts: hosts, Now: time.Now().UTC(),
		Region: req.Region, Reverse: req.Reverse, DropOld: req.DropOld,
	})
	if err != nil {
		var pe *fleet.ErrPlacement
		if errors.As(err, &pe) {
			writeError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	if err := s.takeMoveStep(ctx, c, hosts, load, &step); err != nil {
		if !errors.Is(err, store.ErrConflict) {
			s.shapeError(w, err)
			return
		}
		// Decided on a state that changed meanwhile (a failover, a
		// clone's progress, another client): the next request decides
		// again.
		step = fleet.MoveStep{Action: fleet.MoveWait, Why: err.Error()}
	}
	if step.Action != fleet.MoveWait && step.Action != fleet.MoveDone {
		s.log.Info("move", "cluster", name, "step", step.Action, "why", step.Why)
	}
	hm, _, err := s.hostMap(ctx)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if c, err = s.store.Cluster(ctx, name); err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, MoveView{
		Action: step.Action, Step: step.Why, Move: c.Spec.Move, Cluster: viewCluster(c, hm),
		Done: step.Action == fleet.MoveFinish || step.Action == fleet.MoveDone,
	})
}

// clusterHosts reads what a move needs: the cluster, the live hosts and
// how many members each runs.
func (s *Server) clusterHosts(ctx context.Context, name string) (store.ClusterState, []fleet.Host, map[string]int, error) {
	c, err := s.store.Cluster(ctx, name)
	if err != nil {
		return c, nil, nil, err
	}
	_, hosts, err := s.hostMap(ctx)
	if err != nil {
		return c, nil, nil, err
	}
	cs, err := s.store.Clusters(ctx)
	if err != nil && !store.OnlyInvalid(err) {
		return c, nil, nil, err
	}
	return c, hosts, memberLoad(cs), nil
}

// takeMoveStep writes step, decided on c, and records it in the
// cluster's events.
func (s *Server) takeMoveStep(ctx context.Context, c store.ClusterState, hosts []fleet.Host, load map[string]int, step *fleet.MoveStep) error {
	name := c.Spec.Name
	ev := fleet.Event{Time: time.Now().UTC(), Cluster: name, Host: s.self.Name, Kind: "move", Message: step.Why}
	member := func(id string) fleet.MemberSpec {
		m, _ := c.Member(id)
		return m
	}
	switch step.Action {
	case fleet.MoveBegin:
		mv := *step.Move
		var added []fleet.MemberSpec
		if step.Add > 0 {
			var err error
			if added, err = s.placeMembers(ctx, c, hosts, load, mv.To, fleet.RoleStandby, step.Add); err != nil {
				return err
			}
			var on []string
			for _, m := range added {
				mv.Added = append(mv.Added, m.ID)
				on = append(on, m.ID+" on "+m.Host)
			}
			step.Why += " (" + strings.Join(on, ", ") + "; they clone from a streaming standby, one in " + mv.To + " first, or the primary)"
			ev.Message = step.Why
		}
		var changed []fleet.MemberSpec
		for _, id := range step.Convert {
			m := member(id)
			m.Role, m.Leaving = fleet.RoleStandby, false
			changed = append(changed, m)
		}
		spec := c.Spec
		spec.Move = &mv
		return s.store.WriteMove(ctx, c, spec, changed, added, ev)
	case fleet.MoveLeave:
		var changed []fleet.MemberSpec
		for _, id := range step.Leave {
			m := member(id)
			m.Leaving = true
			changed = append(changed, m)
		}
		return s.store.WriteMove(ctx, c, c.Spec, changed, nil, ev)
	case fleet.MoveFlip:
		spec, changed := fleet.FlipMove(c.Spec, c.Members)
		return s.store.WriteMove(ctx, c, spec, changed, nil, ev)
	case fleet.MoveSwitchover:
		sw := fleet.Switchover{From: c.Leader, To: step.SwitchTo, Requested: time.Now().UTC()}
		if err := s.store.RequestSwitchover(ctx, name, sw); err != nil {
			return err
		}
		ev.Kind = "switchover"
		s.store.AppendEvent(ctx, ev)
		return nil
	case fleet.MoveFinish:
		remove := step.Remove
		return s.store.RemoveMembers(ctx, c, remove, func(sp *fleet.ClusterSpec) {
			*sp = fleet.FinishMove(*sp, c.Members, remove)
		}, ev)
	}
	return nil
}

// refuseDuringMove refuses a change of shape while a move is under way:
// the move places and turns members by its own steps.
func refuseDuringMove(c store.ClusterState) error {
	mv := c.Spec.Move
	if mv == nil {
		return nil
	}
	name := c.Spec.Name
	return fmt.Errorf("a move of %s from %s to %s is under way: finish it (`pgfleet move %s --primary-region %s`) or reverse it (`pgfleet move %s --reverse`) first: %w", name, mv.From, mv.To, name, mv.To, name, store.ErrConflict)
}

// MoveStep asks for one step of a move of cluster name.
func (c *Client) MoveStep(ctx context.Context, name string, req MoveRequest) (MoveView, error) {
	var v MoveView
	err := c.do(ctx, http.MethodPost, "/v1/clusters/"+url.PathEscape(name)+"/move", req, &v)
	return v, err
}

// moveWaitLine is how often a step that waits is shown again while what
// it waits for changes (a clone's progress).
const moveWaitLine = 3 * time.Second

// Move moves cluster name's primary region as req asks, or resumes or
// reverses the move under way, step by step until it is done, writing a
// line to out for each step. Stopped at any point, it is resumed by
// running it again.
func (c *Client) Move(ctx context.Context, name string, req MoveRequest, out io.Writer) error {
	start := time.Now()
	var last, shown, subject string
	var shownAt time.Time
	for {
		v, err := c.MoveStep(ctx, name, req)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("move of %s not done in time (last step: %s); run the same command again to resume it, or `pgfleet move %s --reverse` to undo it", name, last, name)
			}
			return err
		}
		if v.Step != shown && (v.Action != fleet.MoveWait || firstWords(v.Step) != subject || time.Since(shownAt) >= moveWaitLine) {
			fmt.Fprintf(out, "%6.1fs  %s\n", time.Since(start).Seconds(), v.Step)
			shown, shownAt, subject = v.Step, time.Now(), firstWords(v.Step)
		}
		last = v.Step
		if v.Done {
			if v.Action == fleet.MoveFinish {
				fmt.Fprintf(out, "%s moved to %s in %s; primary %s\n", name, v.Cluster.PrimaryRegion, time.Since(start).Round(100*time.Millisecond), v.Cluster.Primary)
			}
			return nil
		}
		// From its first step on, the move is the one under way: a
		// reverse is not asked twice, and a move someone else reversed
		// meanwhile is refused rather than followed. A reverse whose first
		// step has not been written yet is asked again as a reverse.
		if v.Move != nil && (!req.Reverse || v.Action == fleet.MoveBegin) {
			req = MoveRequest{Region: v.Move.To}
		}
		if v.Action == fleet.MoveWait {
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
}

// firstWords is a step's text up to its colon: waits for the same thing
// share it while their detail changes.
func firstWords(s string) string {
	if i := strings.Index(s, ":"); i > 0 {
		return s[:i]
	}
	return s
}
