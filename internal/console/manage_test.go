package console_test

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// section is the part of page from the element with id on: where a
// form's answer must show.
func section(page, id string) string {
	i := strings.Index(page, `id="`+id+`"`)
	if i < 0 {
		return ""
	}
	return page[i:]
}

// TestShapeActions changes a cluster's members through the console's
// forms, as the CLI's `replica add|remove` and `ha` do: a removal needs
// its box ticked, a refusal shows the API's words in the card the user
// acted in, and nothing changes then.
func TestShapeActions(t *testing.T) {
	f := newStateFleet(t, 1)
	admin := f.client(t)
	csrf := admin.signIn(testToken)
	ctx := context.Background()
	members := func() []string {
		c, err := f.st.Cluster(ctx, "db01")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range c.Members {
			ids = append(ids, m.ID)
		}
		return ids
	}

	// The page offers the members but the primary for removal, and no
	// region for a replica: iad is the primary's, ams has one.
	_, page := admin.get("/clusters/db01")
	remove := section(page, "remove-member")
	if !strings.Contains(remove, `value="db01-3"`) || strings.Contains(remove[:strings.Index(remove, "</select>")], `value="db01-1"`) {
		t.Errorf("the removal's choices: want db01-2 and db01-3, not the primary db01-1")
	}
	if !strings.Contains(section(page, "shape"), "Every region of the fleet has a member of this cluster already.") {
		t.Errorf("the replica card does not say that every region has a member")
	}

	// Without the box ticked: refused, nothing removed.
	resp, body := admin.post("/clusters/db01/member-remove", url.Values{"csrf": {csrf}, "member": {"db01-3"}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(section(body, "remove-error"), "removing db01-3 deletes its data: tick the box") {
		t.Errorf("remove without confirming = %s, want 400 and the reason under the removal form", resp.Status)
	}
	if got := members(); len(got) != 3 {
		t.Fatalf("members after an unconfirmed removal: %v", got)
	}
	// The primary: the API's reason, in the removal card.
	resp, body = admin.post("/clusters/db01/member-remove", url.Values{"csrf": {csrf}, "member": {"db01-1"}, "confirm": {"on"}})
	if resp.StatusCode != http.StatusConflict || !strings.Contains(section(body, "remove-error"), "db01-1") {
		t.Errorf("remove the primary = %s, want 409 with the API's reason under the removal form\n%s", resp.Status, section(body, "remove-error"))
	}
	// The replica, confirmed: gone, and the page says what happened.
	resp, body = admin.post("/clusters/db01/member-remove", url.Values{"csrf": {csrf}, "member": {"db01-3"}, "confirm": {"on"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("remove db01-3 = %s\n%s", resp.Status, section(body, "remove-error"))
	}
	if got := members(); len(got) != 2 {
		t.Fatalf("members after removing db01-3: %v", got)
	}
	_, page = admin.get("/clusters/db01")
	if !strings.Contains(page, "removed: db01-3; their hosts delete their data") {
		t.Errorf("the page after the removal does not say what happened")
	}

	// ams is free again: a replica there, numbered after the removed one.
	if !strings.Contains(section(page, "replica-region"), `<option value="ams">`) {
		t.Errorf("the replica card does not offer ams after its replica was removed")
	}
	resp, _ = admin.post("/clusters/db01/replica-add", url.Values{"csrf": {csrf}, "region": {"ams"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("add a replica in ams = %s", resp.Status)
	}
	_, page = admin.get("/clusters/db01")
	if !strings.Contains(page, "db01-4 added: replica on ams-1 (ams)") {
		t.Errorf("the page after adding a replica does not name it")
	}
	// A second one there: the API's 409, in the replica card.
	resp, body = admin.post("/clusters/db01/replica-add", url.Values{"csrf": {csrf}, "region": {"ams"}})
	if resp.StatusCode != http.StatusConflict || !strings.Contains(section(body, "replica-error"), "cluster db01 already has a replica in ams") {
		t.Errorf("a second replica in ams = %s, want 409 with the API's words in the replica card", resp.Status)
	}

	// HA: more standbys than iad has hosts is refused with the API's
	// words, next to the field; not a number is refused before it.
	resp, body = admin.post("/clusters/db01/ha", url.Values{"csrf": {csrf}, "size": {"3"}})
	if resp.StatusCode != http.StatusUnprocessableEntity || section(body, "ha-error") == "" {
		t.Errorf("ha 3 with two hosts in iad = %s, want 422 with the API's reason under the HA field", resp.Status)
	}
	resp, body = admin.post("/clusters/db01/ha", url.Values{"csrf": {csrf}, "size": {"two"}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(section(body, "ha-error"), html.EscapeString(`"two" is not a number`)) {
		t.Errorf("ha two = %s, want 400 and the reason under the HA field", resp.Status)
	}
	resp, _ = admin.post("/clusters/db01/ha", url.Values{"csrf": {csrf}, "size": {"1"}})
	if got := members(); resp.StatusCode != http.StatusSeeOther || len(got) != 2 {
		t.Errorf("ha 1 = %s, members %v; want db01-1 and the replica db01-4", resp.Status, got)
	}

	// Config and databases read from the primary, which this fleet does
	// not run: the page says so instead of failing.
	_, page = admin.get("/clusters/db01")
	for _, want := range []string{`id="config-set"`, `id="db-create"`, `id="app-attach"`, `id="restart"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the cluster page lacks %s", want)
		}
	}
}
