package agent

import (
	"context"
	"maps"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// configure writes postgres' configuration and remembers what it wrote, so
// that a change of the cluster's parameters rewrites it as it stands
// (applyParams) without this member's role or stream changing.
func (s *supervisor) configure(set postgres.Settings) error {
	if err := s.inst.Configure(set); err != nil {
		return err
	}
	s.written = &set
	return nil
}

// applyParams follows the cluster's parameters (`pgfleet config set`): when
// they differ from what the configuration holds, it is rewritten and
// postgres reloaded. The API takes only settings a reload applies.
func (s *supervisor) applyParams(ctx context.Context, params map[string]string) {
	s.cluster.Params = params
	if s.written == nil || maps.Equal(s.written.Params, params) || s.inst.Pid() == 0 {
		return
	}
	next := *s.written
	next.Params = params
	if err := s.configure(next); err != nil {
		s.log.Warn("write the cluster's new settings", "err", err)
		return
	}
	if err := s.inst.Reload(); err != nil {
		s.log.Warn("reload postgres for the cluster's new settings", "err", err)
		return
	}
	s.log.Info("reloaded postgres for the cluster's new settings")
}
