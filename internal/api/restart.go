package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// RestartView answers a restart order: the member carries it out once,
// and its status names the order (MemberView.Restarted) once done.
type RestartView struct {
	Member string `json:"member"`
	Order  string `json:"order"`
}

// restartMember orders one member other than the primary to restart its
// postgres; `pgfleet restart` restarts a cluster one member at a time with
// it, and moves the primary away with a switchover first.
func (s *Server) restartMember(w http.ResponseWriter, r *http.Request) {
	c, m, ok := s.memberOf(w, r, "")
	if !ok {
		return
	}
	name, id := c.Spec.Name, m.ID
	if id == c.Leader {
		writeError(w, http.StatusConflict, fmt.Sprintf("%s is the primary of %s: switch over first (`pgfleet restart %s` does), so that writes move instead of stopping", id, name, name))
		return
	}
	order := randomString(8)
	if err := s.store.RequestRestart(r.Context(), name, id, order); err != nil {
		s.storeError(w, err)
		return
	}
	s.store.AppendEvent(r.Context(), fleet.Event{Time: time.Now().UTC(), Cluster: name, Member: id, Host: s.self.Name, Kind: "restart", Message: fmt.Sprintf("%s ordered to restart postgres (order %s)", id, order)})
	writeJSON(w, http.StatusAccepted, RestartView{Member: id, Order: order})
}

// RestartMember orders member of cluster name to restart its postgres.
func (c *Client) RestartMember(ctx context.Context, name, member string) (RestartView, error) {
	var v RestartView
	err := c.do(ctx, http.MethodPost, "/v1/clusters/"+url.PathEscape(name)+"/members/"+url.PathEscape(member)+"/restart", struct{}{}, &v)
	return v, err
}
