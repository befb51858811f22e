package api

import "net/http"

// accessRoutes serves the cluster's users, databases and app attachments.
func (s *Server) accessRoutes(mux *http.ServeMux) {}
