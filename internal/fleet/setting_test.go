package fleet

import (
	"strings"
	"testing"
)

func TestCheckSetting(t *testing.T) {
	workMem := SettingDef{Name: "work_mem", Type: "integer", Unit: "kB", Min: "64", Max: "2147483647", Context: "user"}
	sharedBuffers := SettingDef{Name: "shared_buffers", Type: "integer", Unit: "8kB", Min: "16", Max: "1073741823", Context: "postmaster"}
	timeout := SettingDef{Name: "statement_timeout", Type: "integer", Unit: "ms", Min: "0", Max: "2147483647", Context: "user"}
	cost := SettingDef{Name: "random_page_cost", Type: "real", Min: "0", Max: "1.79769e+308", Context: "user"}
	level := SettingDef{Name: "log_min_messages", Type: "enum", Enum: []string{"debug1", "info", "warning", "error"}, Context: "superuser"}
	jit := SettingDef{Name: "jit", Type: "bool", Context: "user"}
	for _, tt := range []struct {
		d     SettingDef
		value string
		want  string // "" for valid
	}{
		{workMem, "64MB", ""},
		{workMem, "4096", ""},
		{workMem, "32kB", "out of range: 64 to 2147483647 (in kB)"},
		{workMem, "lots", "not a number"},
		{workMem, "1.5", "want a whole number"},
		{workMem, "10s", `unit "s": want B, kB, MB, GB or TB`},
		{sharedBuffers, "128MB", ""},
		{sharedBuffers, "64kB", "out of range"},
		{timeout, "30s", ""},
		{timeout, "1min", ""},
		{timeout, "5MB", "want us, ms, s, min, h or d"},
		{cost, "1.1", ""},
		{cost, "-1", "out of range"},
		{cost, "1ms", "takes no unit"},
		{level, "WARNING", ""},
		{level, "loud", "want one of debug1, info, warning, error"},
		{jit, "off", ""},
		{jit, "maybe", "want on or off"},
		{SettingDef{Name: "block_size", Type: "integer", Context: "internal"}, "8192", "cannot be set"},
		{SettingDef{Name: "search_path", Type: "string", Context: "user"}, "a\nb", "one line"},
	} {
		err := CheckSetting(tt.d, tt.value)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s = %s: %v, want valid", tt.d.Name, tt.value, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s = %s: %v, want an error with %q", tt.d.Name, tt.value, err, tt.want)
		}
	}
	if !workMem.Reloadable() || sharedBuffers.Reloadable() {
		t.Error("Reloadable: work_mem reloads, shared_buffers needs a restart")
	}
}
