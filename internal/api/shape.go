package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

// ReplicaRequest adds a read replica in a region.
type ReplicaRequest struct {
	Region string `json:"region"`
}

// HARequest sets how many members a cluster has in its primary region.
type HARequest struct {
	Size int `json:"size"`
}

// ShapeView answers a change of a cluster's shape: the members added and
// removed, and the cluster as it is now.
type ShapeView struct {
	Added   []fleet.MemberSpec `json:"added,omitempty"`
	Removed []string           `json:"removed,omitempty"`
	Cluster ClusterView        `json:"cluster"`
}

// shapeInputs reads what placing new members needs: the cluster, the
// live hosts and how many members each runs. A cluster that is moving
// changes shape only by the move's steps.
func (s *Server) shapeInputs(ctx context.Context, name string) (store.ClusterState, []fleet.Host, map[string]int, error) {
	c, hosts, load, err := s.clusterHosts(ctx, name)
	if err == nil {
		err = refuseDuringMove(c)
	}
	return c, hosts, load, err
}

// placeMembers places n new members of role in region, under numbers no
// member of the cluster had.
func (s *Server) placeMembers(ctx context.Context, c store.ClusterState, hosts []fleet.Host, load map[string]int, region string, role fleet.Role, n int) ([]fleet.MemberSpec, error) {
	removed, err := s.store.RemovedMembers(ctx, c)
	if err != nil {
		return nil, err
	}
	var current []string
	for _, m := range c.Members {
		current = append(current, m.ID)
	}
	nums, err := fleet.NextMemberNumbers(c.Spec.Name, current, removed, n)
	if err != nil {
		return nil, err
	}
	return fleet.PlaceMore(c.Spec, c.Members, region, role, n, nums, hosts, load)
}

// addMembers places n new members of role in region and records them.
func (s *Server) addMembers(ctx context.Context, c store.ClusterState, hosts []fleet.Host, load map[string]int, region string, role fleet.Role, n int, change func(*fleet.ClusterSpec)) ([]fleet.MemberSpec, error) {
	added, err := s.placeMembers(ctx, c, hosts, load, region, role, n)
	if err != nil {
		return nil, err
	}
	var msg string
	for _, m := range added {
		msg += fmt.Sprintf(" %s on %s;", m.ID, m.Host)
	}
	ev := fleet.Event{Time: time.Now().UTC(), Cluster: c.Spec.Name, Kind: "member-added", Message: fmt.Sprintf("%s added in %s:%s it clones from a streaming standby, one in its region first, or from the primary", role, region, msg[:len(msg)-1])}
	return added, s.store.AddMembers(ctx, c, added, change, ev)
}

// shapeError answers a failed change of shape.
func (s *Server) shapeError(w http.ResponseWriter, err error) {
	var pe *fleet.ErrPlacement
	switch {
	case errors.As(err, &pe):
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNoQuorum):
		s.storeError(w, err)
	case errors.Is(err, store.ErrInvalid):
		s.storeError(w, err)
	default:
		writeError(w, http.StatusBadRequest, err.Error())
	}
}

func (s *Server) addReplica(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req ReplicaRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := fleet.ValidateRegion(req.Region); err != nil {
		writeError(w, http.StatusBadRequest, "--region: "+err.Error())
		return
	}
	c, hosts, load, err := s.shapeInputs(r.Context(), name)
	if err != nil {
		s.shapeError(w, err)
		return
	}
	switch {
	case req.Region == c.Spec.PrimaryRegion:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s is the primary region of %s: add standbys there with `pgfleet ha %s --size %d`", req.Region, name, name, c.Spec.HA+1))
		return
	case slices.Contains(c.Spec.Replicas, req.Region):
		writeError(w, http.StatusConflict, fmt.Sprintf("cluster %s already has a replica in %s", name, req.Region))
		return
	}
	added, err := s.addMembers(r.Context(), c, hosts, load, req.Region, fleet.RoleReplica, 1, func(sp *fleet.ClusterSpec) {
		sp.Replicas = append(sp.Replicas, req.Region)
	})
	if err != nil {
		s.shapeError(w, err)
		return
	}
	s.log.Info("replica added", "cluster", name, "member", added[0].ID, "host", added[0].Host)
	s.writeShape(w, r, name, http.StatusCreated, added, nil)
}

// memberOf reads the member a request's path names, with its cluster;
// ok false when the request is answered already. confirm asks for the
// member's id again as ?confirm=, for requests that delete its data.
func (s *Server) memberOf(w http.ResponseWriter, r *http.Request, confirm string) (store.ClusterState, fleet.MemberSpec, bool) {
	name, ok := clusterName(w, r)
	if !ok {
		return store.ClusterState{}, fleet.MemberSpec{}, false
	}
	id := r.PathValue("member")
	if err := fleet.ValidateMemberID(name, id); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return store.ClusterState{}, fleet.MemberSpec{}, false
	}
	if confirm != "" && r.URL.Query().Get("confirm") != id {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s member %s deletes its data: repeat its id as ?confirm=%s (`pgfleet replica remove %s %s --yes` does)", confirm, id, id, name, id))
		return store.ClusterState{}, fleet.MemberSpec{}, false
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.shapeError(w, err)
		return store.ClusterState{}, fleet.MemberSpec{}, false
	}
	m, ok := c.Member(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("cluster %s has no member %s", name, id))
	}
	return c, m, ok
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request) {
	c, m, ok := s.memberOf(w, r, "removing")
	if !ok {
		return
	}
	name, id := c.Spec.Name, m.ID
	if err := refuseDuringMove(c); err != nil {
		s.shapeError(w, err)
		return
	}
	if err := fleet.CanRemove(c.Spec, c.Members, c.Leader, id); err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	change := func(sp *fleet.ClusterSpec) {
		if m.Role == fleet.RoleReplica {
			sp.Replicas = slices.DeleteFunc(sp.Replicas, func(r string) bool { return r == m.Region })
		} else {
			sp.HA--
		}
	}
	ev := fleet.Event{Time: time.Now().UTC(), Cluster: name, Member: id, Host: m.Host, Kind: "member-removed", Message: fmt.Sprintf("%s (%s on %s) removed: its data is deleted and its slot dropped", id, m.Role, m.Host)}
	if err := s.removeMembers(r.Context(), c, []string{id}, change, ev); err != nil {
		s.shapeError(w, err)
		return
	}
	s.log.Info("member removed", "cluster", name, "member", id, "host", m.Host)
	s.writeShape(w, r, name, http.StatusOK, nil, []string{id})
}

func (s *Server) setHA(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req HARequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Size < 1 || req.Size > fleet.MaxHA {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("--size %d: a cluster has 1 to %d members in its primary region (1 = a primary without standbys)", req.Size, fleet.MaxHA))
		return
	}
	c, hosts, load, err := s.shapeInputs(r.Context(), name)
	if err != nil {
		s.shapeError(w, err)
		return
	}
	switch d := req.Size - c.Spec.HA; {
	case d == 0:
		s.writeShape(w, r, name, http.StatusOK, nil, nil)
	case d > 0:
		added, err := s.addMembers(r.Context(), c, hosts, load, c.Spec.PrimaryRegion, fleet.RoleStandby, d, func(sp *fleet.ClusterSpec) { sp.HA = req.Size })
		if err != nil {
			s.shapeError(w, err)
			return
		}
		s.log.Info("standbys added", "cluster", name, "ha", req.Size)
		s.writeShape(w, r, name, http.StatusCreated, added, nil)
	default:
		var k []string
		if c.Sync != nil {
			k = c.Sync.Members
		}
		ids, err := fleet.StandbysToRemove(c.Spec, c.Members, c.Leader, k, -d)
		if err != nil {
			writeError(w, http.StatusConflict, err.Error())
			return
		}
		ev := fleet.Event{Time: time.Now().UTC(), Cluster: name, Kind: "member-removed", Message: fmt.Sprintf("ha %d -> %d: %v removed; their data is deleted and their slots dropped", c.Spec.HA, req.Size, ids)}
		if err := s.removeMembers(r.Context(), c, ids, func(sp *fleet.ClusterSpec) { sp.HA = req.Size }, ev); err != nil {
			s.shapeError(w, err)
			return
		}
		s.log.Info("standbys removed", "cluster", name, "ha", req.Size, "members", ids)
		s.writeShape(w, r, name, http.StatusOK, nil, ids)
	}
}

// LeavingSyncSet is in the answer (409) to a removal of members that are
// still in the primary's sync set after leavingWait: the CLI asks again.
const LeavingSyncSet = "still leaving the sync set"

// leavingWait is how long a removal waits for the primary to let go of
// members in its sync set, within the CLI's time for one answer.
const leavingWait = 5 * time.Second

// removeMembers removes ids from cluster c. Members of the sync set, which
// may hold acknowledged commits alone, are first marked leaving, and
// removed once the primary has let go of them.
func (s *Server) removeMembers(ctx context.Context, c store.ClusterState, ids []string, change func(*fleet.ClusterSpec), ev fleet.Event) error {
	inSync := func(c store.ClusterState) []string {
		if c.Sync == nil {
			return nil
		}
		return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return !slices.Contains(c.Sync.Members, id) })
	}
	if held := inSync(c); len(held) > 0 {
		if err := s.store.MarkLeaving(ctx, c, held); err != nil {
			return err
		}
		deadline := time.Now().Add(leavingWait)
		for {
			var err error
			if c, err = s.store.Cluster(ctx, c.Spec.Name); err != nil {
				return err
			}
			if held = inSync(c); len(held) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%v %s of %s (the primary lets go once another standby has every acknowledged commit); ask again: %w", held, LeavingSyncSet, c.Spec.Name, store.ErrConflict)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return s.store.RemoveMembers(ctx, c, ids, change, ev)
}

func (s *Server) writeShape(w http.ResponseWriter, r *http.Request, name string, code int, added []fleet.MemberSpec, removed []string) {
	if c, hm, ok := s.clusterWithHosts(w, r, name); ok {
		writeJSON(w, code, ShapeView{Added: added, Removed: removed, Cluster: viewCluster(c, hm)})
	}
}

// AddReplica adds a read replica of cluster name in region.
func (c *Client) AddReplica(ctx context.Context, name, region string) (ShapeView, error) {
	var v ShapeView
	err := c.do(ctx, http.MethodPost, "/v1/clusters/"+url.PathEscape(name)+"/replicas", ReplicaRequest{Region: region}, &v)
	return v, err
}

// RemoveMember removes member id of cluster name, deleting its data.
func (c *Client) RemoveMember(ctx context.Context, name, id string) (ShapeView, error) {
	var v ShapeView
	err := c.do(ctx, http.MethodDelete, "/v1/clusters/"+url.PathEscape(name)+"/members/"+url.PathEscape(id)+"?confirm="+url.QueryEscape(id), nil, &v)
	return v, err
}

// SetHA sets how many members cluster name has in its primary region.
func (c *Client) SetHA(ctx context.Context, name string, size int) (ShapeView, error) {
	var v ShapeView
	err := c.do(ctx, http.MethodPut, "/v1/clusters/"+url.PathEscape(name)+"/ha", HARequest{Size: size}, &v)
	return v, err
}

// Summary says what a change of shape did, as the CLI and the console
// show it.
func (v ShapeView) Summary() string {
	var lines []string
	for _, m := range v.Added {
		lines = append(lines, fmt.Sprintf("%s added: %s on %s (%s); it clones from a streaming standby (one in its region first) or the primary, then streams", m.ID, m.Role, m.Host, m.Region))
	}
	if len(v.Removed) > 0 {
		lines = append(lines, fmt.Sprintf("removed: %s; their hosts delete their data, and the primary drops their slots", strings.Join(v.Removed, ", ")))
	}
	if len(lines) == 0 {
		return fmt.Sprintf("cluster %s already has that shape", v.Cluster.Name)
	}
	return strings.Join(lines, "\n")
}
