package api

import "net/http"

// caRoutes serves the fleet CA's rotation and certificate revocation.
func (s *Server) caRoutes(mux *http.ServeMux) {}
