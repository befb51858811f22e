package console_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/console"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/store"
)

const testToken = "pgf_consoletest"

// stateFleet is a store holding hosts and clusters with published
// statuses, and an agent's API and console on it: no postgres, so that the
// console's pages, sessions and live updates are tested in seconds.
type stateFleet struct {
	st       *store.Store
	srv      *httptest.Server
	status   *store.Lease
	apiCalls atomic.Int64 // requests the console made of the API
}

func newStateFleet(t testing.TB, clusters int) *stateFleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		Name: "t1", Dir: t.TempDir(), Addr: fmt.Sprintf("127.%d.1.1", labtest.FreeNet(t)), ClientPort: 2379, PeerPort: 2380,
	})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(e.Close)
	prefix := "/test/console/"
	st, err := store.Open(e.Endpoints, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.InitToken(ctx, api.HashToken(testToken)); err != nil {
		t.Fatal(err)
	}
	hostLease, err := st.Grant(context.Background(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []fleet.Host{
		{Name: "iad-1", Region: "iad", Addr: "127.0.1.1", APIAddr: "127.0.1.1:7480", Version: "test", Started: time.Now().UTC()},
		{Name: "iad-2", Region: "iad", Addr: "127.0.1.2", APIAddr: "127.0.1.2:7480", Version: "test", Started: time.Now().UTC()},
		{Name: "ams-1", Region: "ams", Addr: "127.0.2.1", APIAddr: "127.0.2.1:7480", Version: "test", Started: time.Now().UTC()},
	}
	for _, h := range hosts {
		if err := st.RegisterHost(ctx, h, hostLease); err != nil {
			t.Fatal(err)
		}
	}
	f := &stateFleet{st: st}
	if f.status, err = st.Grant(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range clusters {
		f.addCluster(t, fmt.Sprintf("db%02d", i+1), 6000+10*i)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	apiSrv := api.NewServer(st, hosts[0], log)
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.apiCalls.Add(1)
		apiSrv.Handler().ServeHTTP(w, r)
	})
	c, err := console.New(console.Config{API: counted, Etcd: st.Client(), Prefix: prefix, Host: "iad-1", Region: "iad", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	apiSrv.SetConsole(c)
	f.srv = httptest.NewTLSServer(apiSrv.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

// addCluster writes a running cluster of three members: primary and
// standby in iad, a replica in ams.
func (f *stateFleet) addCluster(t testing.TB, name string, port int) {
	t.Helper()
	ctx := context.Background()
	spec := fleet.ClusterSpec{Name: name, PrimaryRegion: "iad", HA: 2, Replicas: []string{"ams"}, Port: port, Created: time.Now().UTC()}
	members := []fleet.MemberSpec{
		{ID: name + "-1", Cluster: name, Host: "iad-1", Region: "iad", Role: fleet.RolePrimary, Port: port},
		{ID: name + "-2", Cluster: name, Host: "iad-2", Region: "iad", Role: fleet.RoleStandby, Port: port},
		{ID: name + "-3", Cluster: name, Host: "ams-1", Region: "ams", Role: fleet.RoleReplica, Port: port},
	}
	if err := f.st.CreateCluster(ctx, spec, fleet.Secrets{SuperuserPassword: "pw", ReplicationPassword: "rpw"}, members, fleet.Event{Cluster: name, Kind: "created", Message: "created by the test"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.st.AcquireLeader(ctx, name, name+"-1", f.status); !ok || err != nil {
		t.Fatalf("AcquireLeader(%s-1) = %v, %v", name, ok, err)
	}
	for _, m := range members {
		f.putStatus(t, name, m.ID, m.Host, m.Role, 0)
	}
}

func (f *stateFleet) putStatus(t testing.TB, cluster, id, host string, role fleet.Role, lag int64) {
	t.Helper()
	if err := f.publish(cluster, id, host, role, lag); err != nil {
		t.Fatal(err)
	}
}

// publish writes a member's status, as its supervisor does every second.
func (f *stateFleet) publish(cluster, id, host string, role fleet.Role, lag int64) error {
	state := fleet.StateStreaming
	if role == fleet.RolePrimary {
		state = fleet.StateRunning
	}
	st := fleet.MemberStatus{ID: id, Host: host, Role: role, State: state, Healthy: true, Timeline: 1, LagBytes: lag, Updated: time.Now().UTC()}
	return f.st.PutStatus(context.Background(), cluster, st, f.status)
}

// browserless is a client of the console that keeps cookies, does not
// follow redirects, and sends the Origin a browser would.
type browserless struct {
	t   testing.TB
	c   *http.Client
	url string
}

func (f *stateFleet) client(t testing.TB) *browserless {
	jar, _ := cookiejar.New(nil)
	c := f.srv.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browserless{t: t, c: c, url: f.srv.URL}
}

func (b *browserless) get(path string) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Get(b.url + path)
	if err != nil {
		b.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func (b *browserless) post(path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.url)
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// hidden returns the value of the hidden input name in page.
func hidden(page, name string) string {
	i := strings.Index(page, `name="`+name+`" value="`)
	if i < 0 {
		return ""
	}
	rest := page[i+len(`name="`+name+`" value="`):]
	return rest[:strings.Index(rest, `"`)]
}

// signIn signs b in with token and returns the CSRF token of its pages.
func (b *browserless) signIn(token string) string {
	b.t.Helper()
	_, page := b.get("/signin")
	resp, body := b.post("/signin", url.Values{"csrf": {hidden(page, "csrf")}, "token": {token}, "next": {"/clusters"}})
	if resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("sign in: %s\n%s", resp.Status, body)
	}
	_, page = b.get("/clusters")
	return hidden(page, "csrf")
}

// eachLine calls f with each line of a live stream until it ends, and
// closes it.
func eachLine(body io.ReadCloser, f func(string)) {
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f(sc.Text())
	}
}
