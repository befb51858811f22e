package console_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestImportMoveRefusals sends the import and move forms what they must
// refuse: the reason shows next to the form, nothing starts, and the
// source's password is never sent back, whether it came in its own field
// or in the URL.
func TestImportMoveRefusals(t *testing.T) {
	f := newStateFleet(t, 1)
	admin := f.client(t)
	csrf := admin.signIn(testToken)

	_, page := admin.get("/clusters/db01")
	for _, want := range []string{`id="import-source"`, `id="import-password"`, `type="password"`, `id="move-region"`, `<option value="ams">`} {
		if !strings.Contains(page, want) {
			t.Errorf("the cluster page lacks %s", want)
		}
	}

	for _, tt := range []struct {
		name             string
		source, password string
		want             string
	}{
		{"not a URL", "mysql://h/db", "pw-field-secret", "not a postgres:// URL"},
		{"no user", "postgres://127.0.0.1:1/shop", "pw-field-secret", "name the user"},
		{"nothing listens", "postgres://app@127.0.0.1:1/shop", "pw-field-secret", "connect to the source"},
		{"password in the URL", "postgres://app:url-secret@127.0.0.1:1/shop", "", "connect to the source"},
	} {
		resp, body := admin.post("/clusters/db01/import", url.Values{"csrf": {csrf}, "source": {tt.source}, "password": {tt.password}, "mode": {"offline"}})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(section(body, "import-error"), tt.want) {
			t.Errorf("%s: import = %s, want 400 with %q under the import form\n%.300s", tt.name, resp.Status, tt.want, section(body, "import-error"))
		}
		if strings.Contains(body, "pw-field-secret") || strings.Contains(body, "url-secret") {
			t.Errorf("%s: the answer holds the password", tt.name)
		}
		if strings.Contains(section(body, "import-source"), "secret") {
			t.Errorf("%s: the source field came back with the password", tt.name)
		}
		if strings.Contains(body, `id="import-progress"`) {
			t.Errorf("%s: an import shows as started", tt.name)
		}
	}

	// A region without a host: the API's refusal, under the move form.
	resp, body := admin.post("/clusters/db01/move", url.Values{"csrf": {csrf}, "region": {"syd"}, "drop_old": {"off"}})
	if resp.StatusCode == http.StatusSeeOther || !strings.Contains(section(body, "move-error"), "syd") {
		t.Errorf("move to syd = %s, want a refusal naming syd under the move form\n%.300s", resp.Status, section(body, "move-error"))
	}
	resp, body = admin.post("/clusters/db01/move", url.Values{"csrf": {csrf}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(section(body, "move-error"), "choose the region") {
		t.Errorf("move without a region = %s, want 400", resp.Status)
	}

	// A read-only token: refused before the agent connects anywhere.
	var tok struct {
		Token string `json:"token"`
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/tokens/read-only", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	r, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(r.Body).Decode(&tok)
	r.Body.Close()
	ro := f.client(t)
	rocsrf := ro.signIn(tok.Token)
	resp, body = ro.post("/clusters/db01/import", url.Values{"csrf": {rocsrf}, "source": {"postgres://app@127.0.0.1:1/shop"}, "mode": {"offline"}})
	if !strings.Contains(body, "a read-only token cannot import") {
		t.Errorf("import with a read-only token = %s, want refused with the reason", resp.Status)
	}
}
