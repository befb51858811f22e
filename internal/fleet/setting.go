package fleet

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// SettingDef is one row of the server's pg_settings: what a value of the
// setting must be. `pgfleet config set` checks values against the
// cluster's own server rather than a list of pgfleet's, so every setting
// of every version is checked as that version would.
type SettingDef struct {
	Name     string
	Type     string // bool, integer, real, enum, string
	Unit     string // base unit of integer and real settings: 8kB, kB, MB, ms, s, min...
	Min, Max string
	Enum     []string
	Context  string // internal, postmaster, sighup, superuser, user...
	Current  string // the server's value now, in Unit
}

// standbyBound are the settings a standby must not have lower than its
// primary, or it refuses to run hot (PostgreSQL checks them at start).
var standbyBound = []string{"max_connections", "max_prepared_transactions", "max_locks_per_transaction", "max_wal_senders", "max_worker_processes"}

// CheckRestartChange checks a setting that takes a restart, which a
// rolling restart applies to the standbys before the primary: one that a
// standby must hold at least as high as its primary cannot go down that
// way.
func CheckRestartChange(d SettingDef, value string) error {
	if !slices.Contains(standbyBound, d.Name) {
		return nil
	}
	next, err := parseWithUnit(strings.TrimSpace(value), d.Unit, d.Type == "integer")
	if err != nil {
		return fmt.Errorf("%s = %q: %v", d.Name, value, err)
	}
	cur, err := strconv.ParseFloat(d.Current, 64)
	if err == nil && next < cur {
		return fmt.Errorf("%s can only go up in a rolling restart (now %s): a standby restarted first with less than its primary would not run; lowering it is not built yet", d.Name, d.Current)
	}
	return nil
}

// Reloadable reports whether a change of the setting takes effect with a
// reload of the configuration, without a restart.
func (d SettingDef) Reloadable() bool {
	switch d.Context {
	case "sighup", "superuser", "user", "superuser-backend", "backend":
		return true
	}
	return false
}

// CheckSetting checks value against the setting's definition, the way the
// server would read it from its configuration file.
func CheckSetting(d SettingDef, value string) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%s = %q: %s", d.Name, value, fmt.Sprintf(format, a...))
	}
	if d.Context == "internal" {
		return fmt.Errorf("%s is fixed when the server is built or initialized: it cannot be set", d.Name)
	}
	v := strings.TrimSpace(value)
	switch d.Type {
	case "bool":
		switch strings.ToLower(v) {
		case "on", "off", "true", "false", "yes", "no", "1", "0":
			return nil
		}
		return bad("want on or off")
	case "enum":
		if slices.ContainsFunc(d.Enum, func(e string) bool { return strings.EqualFold(e, v) }) {
			return nil
		}
		return bad("want one of %s", strings.Join(d.Enum, ", "))
	case "integer", "real":
		n, err := parseWithUnit(v, d.Unit, d.Type == "integer")
		if err != nil {
			return bad("%v", err)
		}
		lo, errLo := strconv.ParseFloat(d.Min, 64)
		hi, errHi := strconv.ParseFloat(d.Max, 64)
		if errLo == nil && errHi == nil && (n < lo || n > hi) {
			unit := ""
			if d.Unit != "" {
				unit = " (in " + d.Unit + ")"
			}
			return bad("out of range: %s to %s%s", d.Min, d.Max, unit)
		}
		return nil
	case "string":
		if strings.ContainsAny(v, "\n\r\x00") {
			return bad("a value is one line")
		}
		return nil
	}
	return fmt.Errorf("%s: unknown setting type %q", d.Name, d.Type)
}

// Units as the server reads them, in bytes and in microseconds.
var (
	memoryUnits = map[string]float64{"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
	timeUnits   = map[string]float64{"us": 1, "ms": 1e3, "s": 1e6, "min": 60e6, "h": 3600e6, "d": 86400e6}
)

// parseWithUnit reads a number, with or without a unit, in the setting's
// base unit (base, e.g. "8kB" or "ms").
func parseWithUnit(v, base string, integer bool) (float64, error) {
	i := 0
	for i < len(v) && (v[i] == '-' || v[i] == '+' || v[i] == '.' || (v[i] >= '0' && v[i] <= '9') || v[i] == 'e' || v[i] == 'E') {
		i++
	}
	num, unit := v[:i], strings.TrimSpace(v[i:])
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(n) || math.IsInf(n, 0) {
		return 0, fmt.Errorf("not a number")
	}
	if unit == "" {
		if integer && n != math.Trunc(n) {
			return 0, fmt.Errorf("want a whole number")
		}
		return n, nil
	}
	baseScale, baseKind := unitScale(base)
	scale, kind := unitScale(unit)
	switch {
	case base == "":
		return 0, fmt.Errorf("this setting takes no unit")
	case kind == "" || kind != baseKind:
		if baseKind == "memory" {
			return 0, fmt.Errorf("unit %q: want B, kB, MB, GB or TB", unit)
		}
		return 0, fmt.Errorf("unit %q: want us, ms, s, min, h or d", unit)
	}
	return n * scale / baseScale, nil
}

// unitScale is a unit's size in bytes or microseconds, and which it is;
// a base unit may carry a multiplier ("8kB").
func unitScale(u string) (float64, string) {
	mult := 1.0
	i := 0
	for i < len(u) && u[i] >= '0' && u[i] <= '9' {
		i++
	}
	if i > 0 {
		m, _ := strconv.Atoi(u[:i])
		mult = float64(m)
	}
	if s, ok := memoryUnits[u[i:]]; ok {
		return mult * s, "memory"
	}
	if s, ok := timeUnits[u[i:]]; ok {
		return mult * s, "time"
	}
	return 0, ""
}
