package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// ReadOnlyTokensView lists the read-only tokens by ID (the part of
// pgfro_<id>_<secret> that names them; the secret is never kept).
type ReadOnlyTokensView struct {
	IDs []string `json:"ids"`
}

func (s *Server) listReadOnlyTokens(w http.ResponseWriter, r *http.Request) {
	ids, err := s.store.ReadOnlyTokens(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ReadOnlyTokensView{IDs: ids})
}

func (s *Server) revokeReadOnlyToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !joinTokenIDRE.MatchString(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("token id %q: want the 8 hex digits after pgfro_ (`pgfleet token list` shows them)", id))
		return
	}
	if err := s.store.DeleteReadOnlyToken(r.Context(), id); err != nil {
		s.storeError(w, err)
		return
	}
	s.log.Info("read-only API token revoked", "id", id)
	w.WriteHeader(http.StatusNoContent)
}

// ReadOnlyTokenID returns the ID of a read-only token given whole or as
// its ID alone.
func ReadOnlyTokenID(s string) string {
	if id, _, ok := parseReadOnlyToken(s); ok {
		return id
	}
	return strings.TrimPrefix(s, "pgfro_")
}

// ReadOnlyTokens lists the read-only tokens' IDs.
func (c *Client) ReadOnlyTokens(ctx context.Context) ([]string, error) {
	var v ReadOnlyTokensView
	err := c.do(ctx, http.MethodGet, "/v1/tokens/read-only", nil, &v)
	return v.IDs, err
}

// RevokeReadOnlyToken revokes read-only token id.
func (c *Client) RevokeReadOnlyToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tokens/read-only/"+url.PathEscape(id), nil, nil)
}
