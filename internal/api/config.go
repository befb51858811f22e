package api

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// ConfigView answers GET /v1/clusters/{name}/config: the settings the
// cluster's spec sets, as the primary has them now.
type ConfigView struct {
	Settings []SettingView `json:"settings"`
}

// SettingView is one setting of a cluster.
type SettingView struct {
	Name string `json:"name"`
	// Value is what the cluster's spec sets; Current is what the primary
	// runs with, in its unit.
	Value   string `json:"value"`
	Current string `json:"current"`
	Unit    string `json:"unit,omitempty"`
	Context string `json:"context"`
	// PendingRestart is set when the primary has the value in its files
	// but needs a restart to use it.
	PendingRestart bool `json:"pending_restart,omitempty"`
}

// ConfigRequest changes settings: Set gives new values, Reset returns
// settings to pgfleet's defaults.
type ConfigRequest struct {
	Set   map[string]string `json:"set,omitempty"`
	Reset []string          `json:"reset,omitempty"`
	// Restart says the caller applies settings that need a restart with a
	// rolling restart (`pgfleet config set --restart` runs `pgfleet
	// restart`); without it they are refused.
	Restart bool `json:"restart,omitempty"`
}

// settingDefs reads the definitions of names from the primary's pg_settings.
func settingDefs(ctx context.Context, conn *pgx.Conn, names []string) (map[string]fleet.SettingDef, error) {
	rows, err := conn.Query(ctx, `SELECT name, vartype, coalesce(unit, ''), coalesce(min_val, ''), coalesce(max_val, ''), coalesce(enumvals, '{}'), context, setting
FROM pg_settings WHERE name = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("read pg_settings: %w", err)
	}
	defs := map[string]fleet.SettingDef{}
	for rows.Next() {
		var d fleet.SettingDef
		if err := rows.Scan(&d.Name, &d.Type, &d.Unit, &d.Min, &d.Max, &d.Enum, &d.Context, &d.Current); err != nil {
			return nil, err
		}
		defs[d.Name] = d
	}
	return defs, rows.Err()
}

// checkConfig checks a change against pgfleet's reserved settings and the
// primary's pg_settings; every problem is named, not only the first.
func checkConfig(req ConfigRequest, defs map[string]fleet.SettingDef) error {
	var problems []string
	names := slices.Sorted(maps.Keys(req.Set))
	for _, n := range names {
		v := req.Set[n]
		if err := fleet.ValidateParameter(n, v); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		d, ok := defs[n]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: the server has no such setting (see `pgfleet config show` and the PostgreSQL documentation)", n))
			continue
		}
		if err := fleet.CheckSetting(d, v); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		switch {
		case d.Reloadable():
		case !req.Restart:
			problems = append(problems, fmt.Sprintf("%s takes effect only when postgres restarts (context %s): add --restart to apply it with a rolling restart", n, d.Context))
		default:
			if err := fleet.CheckRestartChange(d, v); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	for _, n := range req.Reset {
		if why, reserved := fleet.ReservedParameter(n); reserved && !fleet.ResettableReserved(n) {
			problems = append(problems, fmt.Sprintf("%s is pgfleet's to set: %s", n, why))
		} else if d, ok := defs[n]; ok && !d.Reloadable() && !req.Restart {
			problems = append(problems, fmt.Sprintf("%s takes effect only when postgres restarts (context %s): add --restart to apply it with a rolling restart", n, d.Context))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("nothing changed: %s", strings.Join(problems, "; "))
	}
	return nil
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	conn, c, _ := s.primaryConn(w, r, name)
	if conn == nil {
		return
	}
	defer conn.Close(context.WithoutCancel(r.Context()))
	names := slices.Sorted(maps.Keys(c.Spec.Params))
	rows, err := conn.Query(r.Context(), `SELECT name, setting, coalesce(unit, ''), context, pending_restart FROM pg_settings WHERE name = ANY($1) ORDER BY name`, names)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("read the primary's settings: %v", err))
		return
	}
	v := ConfigView{Settings: []SettingView{}}
	for rows.Next() {
		var sv SettingView
		if err := rows.Scan(&sv.Name, &sv.Current, &sv.Unit, &sv.Context, &sv.PendingRestart); err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		sv.Value = c.Spec.Params[sv.Name]
		v.Settings = append(v.Settings, sv)
	}
	if err := rows.Err(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	sort.Slice(v.Settings, func(i, j int) bool { return v.Settings[i].Name < v.Settings[j].Name })
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) setConfig(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req ConfigRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Set) == 0 && len(req.Reset) == 0 {
		writeError(w, http.StatusBadRequest, "nothing to change: give settings as name=value")
		return
	}
	for _, n := range req.Reset {
		if _, both := req.Set[n]; both {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s is both set and reset", n))
			return
		}
	}
	conn, _, _ := s.primaryConn(w, r, name)
	if conn == nil {
		return
	}
	defs, err := settingDefs(r.Context(), conn, append(slices.Collect(maps.Keys(req.Set)), req.Reset...))
	conn.Close(context.WithoutCancel(r.Context()))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err := checkConfig(req, defs); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var changes []string
	err = s.store.UpdateSpec(r.Context(), name, "config", func(spec *fleet.ClusterSpec) error {
		changes = nil
		params := maps.Clone(spec.Params)
		if params == nil {
			params = map[string]string{}
		}
		for _, n := range slices.Sorted(maps.Keys(req.Set)) {
			params[n] = req.Set[n]
			changes = append(changes, n+"="+req.Set[n])
		}
		for _, n := range req.Reset {
			if _, ok := params[n]; ok {
				delete(params, n)
				changes = append(changes, n+" reset")
			}
		}
		spec.Params = params
		return nil
	})
	if err != nil {
		s.storeError(w, err)
		return
	}
	if len(changes) > 0 {
		s.store.AppendEvent(r.Context(), fleet.Event{Time: time.Now().UTC(), Cluster: name, Host: s.self.Name, Kind: "config",
			Message: "settings changed: " + strings.Join(changes, ", ") + "; every member reloads"})
	}
	s.getConfig(w, r)
}

// Config reads cluster name's settings.
func (c *Client) Config(ctx context.Context, name string) (ConfigView, error) {
	var v ConfigView
	err := c.do(ctx, http.MethodGet, "/v1/clusters/"+url.PathEscape(name)+"/config", nil, &v)
	return v, err
}

// SetConfig changes cluster name's settings.
func (c *Client) SetConfig(ctx context.Context, name string, req ConfigRequest) (ConfigView, error) {
	var v ConfigView
	err := c.do(ctx, http.MethodPatch, "/v1/clusters/"+url.PathEscape(name)+"/config", req, &v)
	return v, err
}
