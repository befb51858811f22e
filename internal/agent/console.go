package agent

import (
	"net/http"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/store"
)

// console returns the web console this agent serves beside its API, or nil
// for none.
func (a *Agent) console(st *store.Store, apiSrv *api.Server) http.Handler { return nil }
