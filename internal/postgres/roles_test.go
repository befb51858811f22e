package postgres

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// TestAccess runs the users, databases and apps operations on a real
// server that logs every statement, and checks what each role can do, that
// refusals change nothing, and that no clear password reaches the log.
func TestAccess(t *testing.T) {
	ti := newTestInstance(t, "access")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ti.InitDB(ctx, testPassword); err != nil {
		t.Fatal(err)
	}
	s := ti.settings()
	s.Params = map[string]string{"log_statement": "all"}
	if err := ti.Configure(s); err != nil {
		t.Fatal(err)
	}
	if err := ti.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// The server's certificate (self-signed here) verifies; another CA's
	// does not.
	b, err := os.ReadFile(ti.CertPath())
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	conn, err := ConnectVerified(ctx, ti.superuser(), roots)
	if err != nil {
		t.Fatalf("ConnectVerified with the server's CA: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := ConnectVerified(ctx, ti.superuser(), x509.NewCertPool()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("ConnectVerified with another CA: %v; want a certificate error", err)
	}

	as := func(user, password, db string) error {
		ci := ti.superuser()
		ci.User, ci.Password, ci.Database = user, password, db
		c, err := Connect(ctx, ci)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		_, err = c.Exec(ctx, "SELECT 1")
		return err
	}
	owned := func(n string) bool { return n == "postgres" }
	var passwords []string
	pw := func(p string) string { passwords = append(passwords, p); return p }

	// A read-only user: reads, cannot write; rotated; deleted.
	if err := CreateUser(ctx, conn, "alice", pw("alice-first-password"), true); err != nil {
		t.Fatal(err)
	}
	if err := CreateUser(ctx, conn, "alice", "other", false); !errors.Is(err, ErrExists) {
		t.Errorf("CreateUser(alice) again = %v, want ErrExists", err)
	}
	if err := SetPassword(ctx, conn, "alice", pw("alice-second-password")); err != nil {
		t.Fatal(err)
	}
	if as("alice", "alice-first-password", "postgres") == nil || as("alice", "alice-second-password", "postgres") != nil {
		t.Errorf("after SetPassword the old password must fail and the new one work")
	}

	// A role made by hand is listed and left alone.
	if _, err := conn.Exec(ctx, "CREATE ROLE manual LOGIN"); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(ctx, conn, "manual", "x"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("SetPassword(manual) = %v, want ErrNotAllowed", err)
	}
	if err := DropUser(ctx, conn, "manual"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("DropUser(manual) = %v, want ErrNotAllowed", err)
	}
	if err := DropUser(ctx, conn, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DropUser(nobody) = %v, want ErrNotFound", err)
	}

	// Two apps: each owns its database and reaches no other.
	if err := AttachApp(ctx, conn, "shop", pw("shop-password")); err != nil {
		t.Fatal(err)
	}
	if err := AttachApp(ctx, conn, "billing", pw("billing-password")); err != nil {
		t.Fatal(err)
	}
	if err := AttachApp(ctx, conn, "shop", "again"); !errors.Is(err, ErrExists) {
		t.Errorf("AttachApp(shop) again = %v, want ErrExists", err)
	}
	if err := as("shop", "shop-password", "billing"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("shop connects to billing's database: %v", err)
	}
	if err := as("alice", "alice-second-password", "shop"); err != nil {
		t.Errorf("a user connects to an app's database: %v", err)
	}
	if err := CreateDatabase(ctx, conn, "shop"); !errors.Is(err, ErrExists) {
		t.Errorf("CreateDatabase(shop) = %v, want ErrExists", err)
	}
	if err := DropDatabase(ctx, conn, "shop"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("DropDatabase(shop) = %v, want ErrNotAllowed: it is an app's", err)
	}
	if err := DropUser(ctx, conn, "shop"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("DropUser(shop) = %v, want ErrNotAllowed: it is an app's", err)
	}

	roles, err := Roles(ctx, conn, owned)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range roles {
		got = append(got, r.Name+":"+string(r.Kind))
	}
	if g := strings.Join(got, " "); g != "alice:read-only user billing:app manual: shop:app" {
		t.Errorf("Roles = %s", g)
	}

	// Detach keeps the data; attach lets the app in again; --drop-data
	// drops both.
	if err := DetachApp(ctx, conn, "shop", false); err != nil {
		t.Fatal(err)
	}
	if as("shop", "shop-password", "shop") == nil {
		t.Errorf("a detached app logs in")
	}
	if err := SetPassword(ctx, conn, "shop", "x"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("SetPassword of a detached app = %v, want ErrNotAllowed", err)
	}
	if err := AttachApp(ctx, conn, "shop", pw("shop-new-password")); err != nil {
		t.Fatal(err)
	}
	if err := as("shop", "shop-new-password", "shop"); err != nil {
		t.Errorf("the app attached again: %v", err)
	}
	if err := DetachApp(ctx, conn, "shop", true); err != nil {
		t.Fatal(err)
	}
	dbs, err := Databases(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(dbs) != 1 || dbs[0].Name != "billing" || !dbs[0].App || dbs[0].Owner != "billing" || dbs[0].Bytes <= 0 {
		t.Errorf("Databases = %+v; want billing alone, an app's", dbs)
	}
	if err := DropUser(ctx, conn, "alice"); err != nil {
		t.Fatal(err)
	}

	for _, p := range passwords {
		if strings.Contains(ti.logs.String(), p) {
			t.Errorf("the server's log, with every statement logged, holds the password %q", p)
		}
	}
	if !strings.Contains(ti.logs.String(), "SCRAM-SHA-256$") {
		t.Errorf("the log shows no statement with a SCRAM verifier: is log_statement on?")
	}
}
