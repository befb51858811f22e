package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/pgfleet/pgfleet/internal/store"
)

// RetiredView answers GET /v1/retired/{name}: the shape of a destroyed
// cluster whose backups were kept, so that a restore makes the same shape
// without being told it again. It carries no secret.
type RetiredView struct {
	Name          string    `json:"name"`
	PrimaryRegion string    `json:"primary_region"`
	HA            int       `json:"ha"`
	Replicas      []string  `json:"replicas"`
	Deleted       time.Time `json:"deleted"`
}

func (s *Server) retiredCluster(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	rec, err := s.store.Retired(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no cluster named %s was destroyed with its backups kept: check the name (`pgfleet list` shows the live clusters)", name))
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	v := RetiredView{Name: name, PrimaryRegion: rec.Spec.PrimaryRegion, HA: rec.Spec.HA, Replicas: rec.Spec.Replicas, Deleted: rec.Deleted}
	if v.Replicas == nil {
		v.Replicas = []string{}
	}
	writeJSON(w, http.StatusOK, v)
}

// Retired reads the shape of destroyed cluster name, if its backups were
// kept.
func (c *Client) Retired(ctx context.Context, name string) (RetiredView, error) {
	var v RetiredView
	err := c.do(ctx, http.MethodGet, "/v1/retired/"+url.PathEscape(name), nil, &v)
	return v, err
}
