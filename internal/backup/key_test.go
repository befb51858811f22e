package backup

import (
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	secret := []byte("0123456789abcdef0123456789abcdef")
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // despite the umask
		return p
	}
	want, _ := NewKey(secret)
	for name, content := range map[string]string{
		"hex":          hex.EncodeToString(secret) + "\n",
		"hex-upper":    strings.ToUpper(hex.EncodeToString(secret)),
		"base64":       base64.StdEncoding.EncodeToString(secret) + "\n",
		"base64-raw":   base64.RawStdEncoding.EncodeToString(secret),
		"base64-space": "  " + base64.StdEncoding.EncodeToString(secret) + "  \n\n",
	} {
		k, err := LoadKey(write(name, content, 0o600))
		if err != nil {
			t.Errorf("LoadKey(%s): %v", name, err)
			continue
		}
		if k.ID() != want.ID() || k.secret != want.secret {
			t.Errorf("LoadKey(%s) read another key", name)
		}
	}
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"group-readable": {hex.EncodeToString(secret), 0o640, "chmod 600"},
		"world-readable": {hex.EncodeToString(secret), 0o644, "mode 0644"},
		"short":          {hex.EncodeToString(secret[:16]), 0o600, "want 32 bytes"},
		"garbage":        {"not a key at all", 0o600, "want 32 bytes"},
		"empty":          {"", 0o600, "read key file"},
	} {
		_, err := LoadKey(write(name, c.content, c.mode))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadKey(%s) = %v, want an error containing %q", name, err, c.want)
		}
	}
	if k, err := ParseKey(" " + hex.EncodeToString(secret) + "\n"); err != nil || k.ID() != want.ID() {
		t.Errorf("ParseKey(hex) = %v, %v", k, err)
	}
	if _, err := ParseKey("abcd"); err == nil {
		t.Error("ParseKey(short) succeeded")
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadKey(missing) succeeded")
	}
}

func TestWriteNewKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key")
	k, err := WriteNewKey(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadKey(p)
	if err != nil || k2.ID() != k.ID() {
		t.Errorf("LoadKey(new key) = %v, %v", k2, err)
	}
	if _, err := WriteNewKey(p); err == nil {
		t.Error("WriteNewKey over an existing file succeeded")
	}
}
