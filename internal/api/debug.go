package api

import (
	"net/http"
	"net/http/pprof"
)

// debugRoutes serves the Go runtime's profiles (net/http/pprof) to the
// fleet's API token only: a CPU or heap profile of an agent that uses more
// than it should is what an operator, or bench/agent, needs to say why,
// and a profile shows the agent's code paths and memory, not for anyone
// else.
func (s *Server) debugRoutes(mux *http.ServeMux) {
	mux.Handle("GET /debug/pprof/", s.auth(pprof.Index))
	mux.Handle("GET /debug/pprof/profile", s.auth(pprof.Profile))
	mux.Handle("GET /debug/pprof/cmdline", s.auth(func(w http.ResponseWriter, _ *http.Request) {
		// The command line names files and flags of the host; the
		// profiles do not need it.
		http.Error(w, "not served", http.StatusNotFound)
	}))
}
