package postgres

import (
	"slices"
	"strings"
	"testing"
)

// TestMinimalEnv: a child's environment is the allowlist and pgfleet's own
// variables, whatever the agent's holds.
func TestMinimalEnv(t *testing.T) {
	agent := []string{
		"AWS_ACCESS_KEY_ID=AKIDSENTINEL",
		"AWS_SECRET_ACCESS_KEY=sentinel-secret",
		"AWS_SHARED_CREDENTIALS_FILE=/root/.aws/credentials",
		"GOOGLE_APPLICATION_CREDENTIALS=/root/gcp.json",
		"PGPASSWORD=agent-password",
		"PGDATA=/elsewhere",
		"PATH=/home/me/bin:/usr/bin",
		"HOME=/root",
		"LD_PRELOAD=/tmp/evil.so",
		"LANG=en_US.UTF-8",
		"LC_MESSAGES=de_DE.UTF-8",
		"LANGUAGE=en",
		"TZ=Europe/Paris",
		"LC_ALL",   // no '=': not a variable
		"LCX=oops", // not LC_
	}
	pg := OSUser{Name: "postgres", UID: 101, GID: 104, Home: "/var/lib/postgresql"}
	got := minimalEnv(agent, pg, "PGPASSFILE=/run/pass", "LC_ALL=C")
	want := []string{
		"PATH=" + safePath,
		"LANG=en_US.UTF-8",
		"LC_MESSAGES=de_DE.UTF-8",
		"LANGUAGE=en",
		"TZ=Europe/Paris",
		"HOME=/var/lib/postgresql",
		"PGPASSFILE=/run/pass",
		"LC_ALL=C",
	}
	if !slices.Equal(got, want) {
		t.Errorf("minimalEnv(agent's env) =\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// Without a home (an OS user with none), HOME is left unset rather
	// than taken from the agent.
	got = minimalEnv(agent, OSUser{Name: "nobody", UID: 65534})
	for _, kv := range got {
		if strings.HasPrefix(kv, "HOME=") {
			t.Errorf("minimalEnv for a user without a home holds %s, want no HOME", kv)
		}
	}
}
