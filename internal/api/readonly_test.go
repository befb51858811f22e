package api_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/api"
)

// TestReadOnlyTokens makes a read-only token, finds it in the list, reads
// with it, revokes it and sees it refused on every agent; bad and unknown
// IDs are refused with a message, and a read-only token cannot manage
// tokens.
func TestReadOnlyTokens(t *testing.T) {
	f := newTestFleet(t)
	ctx := context.Background()
	admin := api.NewClient([]string{strings.TrimPrefix(f.servers["iad-1"].URL, "https://")}, testToken, f.ca("iad-1"))
	tok, err := admin.CreateReadOnlyToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := api.ReadOnlyTokenID(tok)
	if ids, err := admin.ReadOnlyTokens(ctx); err != nil || !slices.Contains(ids, id) {
		t.Fatalf("ReadOnlyTokens = %v, %v; want %s in it", ids, err, id)
	}
	ro := api.NewClient([]string{strings.TrimPrefix(f.servers["iad-2"].URL, "https://")}, tok, f.ca("iad-2"))
	if _, err := ro.Clusters(ctx); err != nil {
		t.Fatalf("list clusters with the read-only token: %v", err)
	}
	if _, err := ro.ReadOnlyTokens(ctx); err == nil || !strings.Contains(err.Error(), "read-only token can list") {
		t.Errorf("a read-only token listing tokens: %v, want refused", err)
	}
	if err := ro.RevokeReadOnlyToken(ctx, id); err == nil {
		t.Error("a read-only token revoked itself")
	}

	if err := admin.RevokeReadOnlyToken(ctx, id); err != nil {
		t.Fatalf("revoke %s: %v", id, err)
	}
	for host, srv := range f.servers {
		c := api.NewClient([]string{strings.TrimPrefix(srv.URL, "https://")}, tok, f.ca(host))
		if _, err := c.Clusters(ctx); err == nil {
			t.Errorf("%s accepts the revoked read-only token", host)
		}
	}
	if ids, err := admin.ReadOnlyTokens(ctx); err != nil || slices.Contains(ids, id) {
		t.Errorf("ReadOnlyTokens after the revoke = %v, %v; want %s gone", ids, err, id)
	}
	for _, tt := range []struct{ id, want string }{
		{id, "not found"},
		{"zz", "want the 8 hex digits"},
	} {
		if err := admin.RevokeReadOnlyToken(ctx, tt.id); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("revoke %q: %v, want an error saying %q", tt.id, err, tt.want)
		}
	}
}
