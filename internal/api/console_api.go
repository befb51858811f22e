package api

import (
	"net/http"
	"sort"
)

// RTTView is one measured round trip between two live hosts, as GET
// /v1/rtt answers it: what the routing proxies pick the nearest member by.
type RTTView struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Micros is the last round trip From measured to To, in microseconds.
	Micros int64 `json:"rtt_us"`
}

// consoleRoutes serves what the web console shows beyond what the CLI
// needs: the round trips the agents measure between hosts, to any token,
// read-only ones included (round trips reveal no secret).
func (s *Server) consoleRoutes(mux *http.ServeMux) {
	mux.Handle("GET /v1/rtt", s.read(s.rtts))
}

func (s *Server) rtts(w http.ResponseWriter, r *http.Request) {
	m, err := s.store.RTTs(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	out := []RTTView{}
	for from, tos := range m {
		for to, d := range tos {
			out = append(out, RTTView{From: from, To: to, Micros: d.Microseconds()})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	writeJSON(w, http.StatusOK, out)
}
