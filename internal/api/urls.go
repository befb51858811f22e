package api

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

// URLOptions choose the URL that GET /v1/clusters/{name}/url returns. The
// zero value is the URL apps should use: the primary, through the routing
// proxies of the primary region's hosts.
type URLOptions struct {
	// Member asks for a direct URL of that one member, bypassing the
	// proxies; it excludes the other options.
	Member string
	// Region lists the proxies of that region's hosts instead of the
	// primary region's, for apps running there.
	Region string
	// Replica asks for the proxies' replica port, which routes to the
	// nearest member fit for reads, instead of the primary port.
	Replica bool
	// Direct lists the members' own postgres instead of the proxies, the
	// primary first, and lets libpq pick by target_session_attrs.
	Direct bool
	// Pooled asks for the proxies' pooled port, which runs each
	// transaction on a pooled server connection to the primary.
	Pooled bool
}

// query encodes the options as GET /v1/clusters/{name}/url parameters.
func (o URLOptions) query() url.Values {
	q := url.Values{}
	if o.Member != "" {
		q.Set("member", o.Member)
	}
	if o.Region != "" {
		q.Set("region", o.Region)
	}
	if o.Replica {
		q.Set("replica", "true")
	}
	if o.Direct {
		q.Set("direct", "true")
	}
	if o.Pooled {
		q.Set("pooled", "true")
	}
	return q
}

// Check reports options that contradict each other, naming them as the
// CLI's flags.
func (o URLOptions) Check() error { return o.conflict("--") }

// conflict is Check with the options' names prefixed by dash: "--" for
// flags, "" for query parameters.
func (o URLOptions) conflict(dash string) error {
	var others []string
	if o.Region != "" {
		others = append(others, dash+"region")
	}
	if o.Replica {
		others = append(others, dash+"replica")
	}
	if o.Direct {
		others = append(others, dash+"direct")
	}
	if o.Pooled {
		others = append(others, dash+"pooled")
	}
	if o.Member != "" && len(others) > 0 {
		return fmt.Errorf("%smember cannot be combined with %s: %smember gives a direct URL of that one member, while %s choose among several hosts; drop one or the other",
			dash, strings.Join(others, " or "), dash, strings.Join(others, " and "))
	}
	if o.Pooled && (o.Replica || o.Direct) {
		return fmt.Errorf("%spooled cannot be combined with %sreplica or %sdirect: the pooled port runs transactions on the primary, through the proxies", dash, dash, dash)
	}
	if o.Direct && o.Region != "" {
		return fmt.Errorf("%sdirect cannot be combined with %sregion: %sregion picks the hosts whose proxies the URL lists, while %sdirect lists the cluster's members wherever they are; for one member in a region use %smember",
			dash, dash, dash, dash, dash)
	}
	return nil
}

// parseURLQuery reads the parameters of GET /v1/clusters/{name}/url,
// refusing unknown, repeated and malformed ones.
func parseURLQuery(rawQuery string) (URLOptions, error) {
	var o URLOptions
	keys, q, err := singleParams(rawQuery)
	if err != nil {
		return o, err
	}
	for _, k := range keys {
		v := q[k]
		switch k {
		case "member":
			if v == "" {
				return o, fmt.Errorf("member is empty: give a member id, or leave member out for the primary")
			}
			o.Member = v
		case "region":
			if err := fleet.ValidateName("region", v, fleet.MaxRegionName); err != nil {
				return o, err
			}
			o.Region = v
		case "replica", "direct", "pooled":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("%s=%q is not valid: give true or false", k, v)
			}
			switch k {
			case "replica":
				o.Replica = b
			case "direct":
				o.Direct = b
			default:
				o.Pooled = b
			}
		default:
			return o, fmt.Errorf("unknown parameter %q: give member, region, replica, direct or pooled", k)
		}
	}
	return o, o.conflict("")
}

// singleParams parses a query whose parameters may each be given once,
// refusing a repeated one: its keys, sorted so that the same query always
// gets the same first complaint, and their values.
func singleParams(rawQuery string) ([]string, map[string]string, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, nil, fmt.Errorf("query %q is not valid: %v", rawQuery, err)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vals := make(map[string]string, len(q))
	for _, k := range keys {
		if vs := q[k]; len(vs) != 1 {
			return nil, nil, fmt.Errorf("parameter %s is given %d times: give it once", k, len(vs))
		}
		vals[k] = q[k][0]
	}
	return keys, vals, nil
}

// urlTarget is where a cluster URL points, before credentials are added.
type urlTarget struct {
	Hosts  []string // host:port, in the order libpq tries them
	Query  string   // the URL's query
	Member string   // the member of a direct single-member URL
	Via    string   // "proxy", "direct" or "member"
	Region string   // the region whose proxies are listed
	Port   int      // the proxies' port
}

// clientQuery is the query of every URL: the servers only take TLS
// connections (hostssl in pg_hba.conf), the proxies pass TLS through, and
// every member serves a certificate from the fleet's CA that names every
// host, so the client verifies the server whichever host it dialled. The
// client adds sslrootcert, the CA file it keeps (Client.CAFile).
const clientQuery = "sslmode=verify-full"

// clusterURLTarget decides what a URL request points at, from the cluster
// and the live hosts (the store's host records, which vanish with their
// lease). It answers a status code and why when there is nothing to point
// at.
func clusterURLTarget(c store.ClusterState, hosts []fleet.Host, o URLOptions) (urlTarget, int, string) {
	byName := make(map[string]fleet.Host, len(hosts))
	for _, h := range hosts {
		byName[h.Name] = h
	}
	name := c.Spec.Name
	switch {
	case o.Member != "":
		m, ok := c.Member(o.Member)
		if !ok {
			ids := make([]string, len(c.Members))
			for i, m := range c.Members {
				ids[i] = m.ID
			}
			return urlTarget{}, http.StatusNotFound, fmt.Sprintf("cluster %s has no member %q: its members are %s", name, o.Member, strings.Join(ids, ", "))
		}
		h, ok := byName[m.Host]
		if !ok {
			return urlTarget{}, http.StatusServiceUnavailable, fmt.Sprintf("member %s is on host %s, which is down", m.ID, m.Host)
		}
		return urlTarget{Hosts: []string{net.JoinHostPort(h.Addr, strconv.Itoa(m.Port))}, Query: clientQuery, Member: m.ID, Via: "member"}, 0, ""

	case o.Direct:
		// The primary first: libpq tries hosts in order, so a writer finds it
		// at once; target_session_attrs makes libpq skip a member in the
		// wrong role, as after a failover.
		members := append([]fleet.MemberSpec(nil), c.Members...)
		sort.SliceStable(members, func(i, j int) bool { return members[i].ID == c.Leader && members[j].ID != c.Leader })
		t := urlTarget{Query: clientQuery + "&target_session_attrs=read-write", Via: "direct"}
		if o.Replica {
			t.Query = clientQuery + "&target_session_attrs=prefer-standby"
		}
		var down []string
		for _, m := range members {
			h, ok := byName[m.Host]
			if !ok {
				down = append(down, m.ID)
				continue
			}
			t.Hosts = append(t.Hosts, net.JoinHostPort(h.Addr, strconv.Itoa(m.Port)))
		}
		if len(t.Hosts) == 0 {
			return urlTarget{}, http.StatusServiceUnavailable, fmt.Sprintf("every member of cluster %s is on a host that is down (%s)", name, strings.Join(down, ", "))
		}
		return t, 0, ""
	}

	region := o.Region
	if region == "" {
		region = c.Spec.PrimaryRegion
	}
	t := urlTarget{Query: clientQuery, Via: "proxy", Region: region, Port: c.Spec.PrimaryProxyPort()}
	if o.Replica {
		t.Port = c.Spec.ReplicaProxyPort()
	}
	if o.Pooled {
		// The pooler terminates TLS with the host's own certificate from
		// the fleet's CA, which names that host: verify-full holds.
		t.Port = c.Spec.PooledProxyPort()
	}
	// Every agent runs the proxies of every cluster, so every live host of
	// the region is listed, also those without a member of this cluster.
	perRegion := map[string]int{}
	for _, h := range hosts {
		perRegion[h.Region]++
		if h.Region == region {
			t.Hosts = append(t.Hosts, net.JoinHostPort(h.Addr, strconv.Itoa(t.Port)))
		}
	}
	if len(t.Hosts) > 0 {
		return t, 0, ""
	}
	regions := make([]string, 0, len(perRegion))
	for r, n := range perRegion {
		regions = append(regions, fmt.Sprintf("%s (%d)", r, n))
	}
	sort.Strings(regions)
	live := "no host of the fleet is up"
	if len(regions) > 0 {
		live = "regions with live hosts: " + strings.Join(regions, ", ")
	}
	for _, m := range c.Members {
		if m.Region == region {
			// The cluster runs there: its hosts are down, not unknown.
			return urlTarget{}, http.StatusServiceUnavailable, fmt.Sprintf("every host of region %s is down (%s): start them, or pass --region for another region", region, live)
		}
	}
	return urlTarget{}, http.StatusNotFound, fmt.Sprintf("region %q has no live host (%s): pick one of those", region, live)
}

// format builds the libpq URL of t, with the superuser's credentials.
// Several hosts make a multi-host URL (host1:port1,host2:port2), which
// libpq 10+ and pgx try in order. (pgx parses URLs with net/url, which
// refuses IPv6 addresses in a multi-host URL; libpq takes them.)
func (t urlTarget) format(sec fleet.Secrets) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(fleet.Superuser, sec.SuperuserPassword),
		Host:     strings.Join(t.Hosts, ","),
		Path:     "/postgres",
		RawQuery: t.Query,
	}
	return u.String()
}
