package agent

import (
	"net/http"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/console"
	"github.com/pgfleet/pgfleet/internal/store"
)

// console returns the web console this agent serves beside its API, or nil
// for none. The console calls the API in process, through the same
// handlers (and so the same authorization) as the CLI's requests.
func (a *Agent) console(st *store.Store, apiSrv *api.Server) http.Handler {
	c, err := console.New(console.Config{
		API: apiSrv.Handler(), Etcd: st.Client(), Prefix: storePrefix(a.cfg.EtcdPrefix),
		Host: a.host.Name, Region: a.host.Region, Log: a.log.With("component", "console"),
		CAFile: a.tlsFiles().CAPath(),
	})
	if err != nil {
		// The templates are embedded and parsed in tests: this is a
		// build that should never have shipped.
		a.log.Error("web console disabled", "err", err)
		return nil
	}
	return c
}

// storePrefix is the key prefix store.Open uses for prefix.
func storePrefix(prefix string) string {
	if prefix == "" {
		prefix = "/pgfleet/"
	}
	if prefix[len(prefix)-1] != '/' {
		prefix += "/"
	}
	return prefix
}
