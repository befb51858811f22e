package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// caRoutes serves the fleet CA's rotation (pki.Rotation).
func (s *Server) caRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/ca/rotate", s.auth(s.startRotation))
	mux.Handle("GET /v1/ca/rotation", s.read(s.rotationStatus))
}

// RotateRequest starts a CA rotation.
type RotateRequest struct {
	// Exclude names hosts the rotation leaves behind: they get no
	// certificate from the new CA, and once the old CA is retired the fleet
	// refuses them.
	Exclude []string `json:"exclude,omitempty"`
}

// RotationView is a CA rotation's progress.
type RotationView struct {
	ID          string    `json:"id"`
	Phase       pki.Phase `json:"phase"`
	Started     time.Time `json:"started"`
	Coordinator string    `json:"coordinator,omitempty"`
	Exclude     []string  `json:"exclude,omitempty"`
	// Waiting lists the hosts that are not through the phase yet.
	Waiting []string `json:"waiting"`
	// NewCA is the CA that replaces the old one (PEM), once made.
	NewCA string `json:"new_ca,omitempty"`
}

// SetStoreVoters tells the server how to list the store's voters: on a
// fleet with embedded etcd they are hosts that take part in a CA rotation
// even while down. Nil (an existing etcd) leaves them out.
func (s *Server) SetStoreVoters(f func(context.Context) ([]string, error)) { s.voters = f }

// SetExcluded gives the server the agent's memory of the hosts each CA
// rotation leaves behind (as the agent first saw the record), which
// renewals check beside the record itself.
func (s *Server) SetExcluded(f func(rotation, host string) bool) { s.excluded = f }

// RotationHosts returns the hosts a rotation waits for: every registered
// host and every store voter (embedded etcd), less those it excludes.
func RotationHosts(ctx context.Context, st *store.Store, voters func(context.Context) ([]string, error)) ([]string, error) {
	hosts, err := st.Hosts(ctx)
	if err != nil && !store.OnlyInvalid(err) {
		return nil, err
	}
	var out []string
	for _, h := range hosts {
		out = append(out, h.Name)
	}
	if voters != nil {
		vs, err := voters(ctx)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			if !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

func (s *Server) startRotation(w http.ResponseWriter, r *http.Request) {
	var req RotateRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	hosts, err := s.store.Hosts(r.Context())
	if err != nil && !store.OnlyInvalid(err) {
		s.storeError(w, err)
		return
	}
	live := map[string]bool{}
	for _, h := range hosts {
		live[h.Name] = true
	}
	var voters []string
	if s.voters != nil {
		if voters, err = s.voters(r.Context()); err != nil {
			s.storeError(w, err)
			return
		}
	}
	for _, h := range req.Exclude {
		if err := fleet.ValidateHostName(h); err != nil {
			writeError(w, http.StatusBadRequest, "--exclude: "+err.Error())
			return
		}
		if slices.Contains(voters, h) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("--exclude %s: that host runs one of the store's voters, which the rotation restarts with the new CA; it cannot be left behind", h))
			return
		}
	}
	// Every voter restarts its etcd member in turn: with one of them down,
	// the restart of another would cost the store its quorum.
	for _, v := range voters {
		if !live[v] {
			writeError(w, http.StatusConflict, fmt.Sprintf("host %s, one of the store's voters, is not running: start it before rotating the CA", v))
			return
		}
	}
	rot := pki.Rotation{ID: pki.NewRotationID(), Phase: pki.PhaseRequested, Started: time.Now().UTC(), Exclude: req.Exclude}
	if err := s.store.StartCARotation(r.Context(), rot); err != nil {
		s.storeError(w, err)
		return
	}
	s.log.Info("CA rotation requested", "id", rot.ID, "exclude", rot.Exclude)
	writeJSON(w, http.StatusAccepted, RotationView{ID: rot.ID, Phase: rot.Phase, Started: rot.Started, Exclude: rot.Exclude, Waiting: []string{}})
}

func (s *Server) rotationStatus(w http.ResponseWriter, r *http.Request) {
	rot, _, err := s.store.CARotation(r.Context())
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusNotFound, "no CA rotation is under way")
			return
		}
		s.storeError(w, err)
		return
	}
	hosts, err := RotationHosts(r.Context(), s.store, s.voters)
	if err != nil {
		s.storeError(w, err)
		return
	}
	acks, err := s.store.RotationAcks(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	v := RotationView{ID: rot.ID, Phase: rot.Phase, Started: rot.Started, Coordinator: rot.Coordinator, Exclude: rot.Exclude, Waiting: rot.Waiting(hosts, acks), NewCA: string(rot.NewCA)}
	if v.Waiting == nil {
		v.Waiting = []string{}
	}
	writeJSON(w, http.StatusOK, v)
}

// rotating answers 409 and reports true while a CA rotation is under way:
// what would pin or hand out the CA (join tokens, joins) waits for its end.
func (s *Server) rotating(w http.ResponseWriter, r *http.Request, what string) bool {
	rot, _, err := s.store.CARotation(r.Context())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false
	case err != nil:
		s.storeError(w, err)
		return true
	}
	writeError(w, http.StatusConflict, fmt.Sprintf("cannot %s while CA rotation %s is under way (phase %s): wait for its end (`pgfleet ca rotate --status`)", what, rot.ID, rot.Phase))
	return true
}

// RotateCA starts a CA rotation.
func (c *Client) RotateCA(ctx context.Context, exclude []string) (RotationView, error) {
	var v RotationView
	err := c.do(ctx, http.MethodPost, "/v1/ca/rotate", RotateRequest{Exclude: exclude}, &v)
	return v, err
}

// CARotation reads the rotation under way; an error for which IsNotFound
// holds once there is none.
func (c *Client) CARotation(ctx context.Context) (RotationView, error) {
	var v RotationView
	err := c.do(ctx, http.MethodGet, "/v1/ca/rotation", nil, &v)
	return v, err
}
