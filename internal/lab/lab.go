// Package lab runs local multi-region fleets on one machine: every host is
// a real `pgfleet agent` process on its own loopback address. `pgfleet dev
// up` uses it, and so do the end-to-end tests and benchmarks.
package lab

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pki"
)

// DefaultRegions is the fleet `pgfleet dev up` starts: three hosts in the
// primary region, so a cluster there has two standbys, and one in each of
// two other regions for read replicas.
const DefaultRegions = "iad:3,ams,syd"

// MaxHosts bounds a dev fleet: every host runs an agent and postgres
// instances on this one machine.
const MaxHosts = 12

// HostPlan is one host of a dev fleet.
type HostPlan struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	Addr   string `json:"addr"`
}

// API is the host's API address.
func (h HostPlan) API() string { return net.JoinHostPort(h.Addr, "7480") }

// Plan is a dev fleet's layout, saved in its directory.
type Plan struct {
	Regions string     `json:"regions"`
	Hosts   []HostPlan `json:"hosts"`
}

// ParsePlan turns "iad:3,ams,syd" into hosts iad-1..iad-3 on 127.N.1.1-3,
// ams-1 on 127.N.2.1 and syd-1 on 127.N.3.1, where N is net (0 for
// `dev up`; tests pick another so they never meet a developer's fleet).
func ParsePlan(regions string, netOctet int) (Plan, error) {
	if strings.TrimSpace(regions) == "" {
		return Plan{}, errors.New("--regions is empty: give regions like iad:3,ams,syd")
	}
	p := Plan{Regions: regions}
	seen := map[string]bool{}
	for i, part := range strings.Split(regions, ",") {
		name, count, hasCount := strings.Cut(strings.TrimSpace(part), ":")
		if err := fleet.ValidateName("region", name, fleet.MaxRegionName); err != nil {
			return Plan{}, fmt.Errorf("--regions %q: %w", regions, err)
		}
		if seen[name] {
			return Plan{}, fmt.Errorf("--regions %q: region %s is listed twice", regions, name)
		}
		seen[name] = true
		n := 1
		if hasCount {
			var err error
			n, err = strconv.Atoi(count)
			if err != nil || n < 1 {
				return Plan{}, fmt.Errorf("--regions %q: host count %q of %s must be a positive number", regions, count, name)
			}
		}
		for j := 1; j <= n; j++ {
			p.Hosts = append(p.Hosts, HostPlan{
				Name: fmt.Sprintf("%s-%d", name, j), Region: name,
				Addr: fmt.Sprintf("127.%d.%d.%d", netOctet, i+1, j),
			})
		}
	}
	if len(p.Hosts) > MaxHosts {
		return Plan{}, fmt.Errorf("--regions %q asks for %d hosts: a dev fleet on one machine has at most %d", regions, len(p.Hosts), MaxHosts)
	}
	return p, nil
}

// Dev is a local fleet in one directory.
type Dev struct {
	Exe   string // the pgfleet binary the agents run
	Dir   string // the fleet's directory: one folder per host
	PGBin string // passed to the agents when set
	Out   io.Writer
	// Wrap, when set, returns the command that runs an agent's command line
	// for host h, e.g. `ip netns exec NS`: tests run hosts in network
	// namespaces of their own to cut them off.
	Wrap func(h HostPlan) []string
}

func (d *Dev) planPath() string          { return filepath.Join(d.Dir, "fleet.json") }
func (d *Dev) hostDir(h HostPlan) string { return filepath.Join(d.Dir, h.Name) }
func (d *Dev) pidPath(h HostPlan) string { return filepath.Join(d.Dir, h.Name+".pid") }
func (d *Dev) logPath(h HostPlan) string { return filepath.Join(d.Dir, h.Name+".log") }
func (d *Dev) printf(f string, a ...any) { fmt.Fprintf(d.Out, f, a...) }
func (d *Dev) hostLog(h HostPlan) string { return Tail(d.logPath(h), 15) }

// AgentPid is the pid of host's running agent, 0 if none runs.
func (d *Dev) AgentPid(h HostPlan) int { return d.runningPid(h) }

// PostmasterPid is the pid that member's postmaster.pid on host names, 0
// if there is none.
func (d *Dev) PostmasterPid(h HostPlan, member string) int {
	b, err := os.ReadFile(filepath.Join(d.hostDir(h), "members", member, "pgdata", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// Endpoints lists the API addresses of the fleet's hosts.
func Endpoints(p Plan) (eps []string) {
	for _, h := range p.Hosts {
		eps = append(eps, h.API())
	}
	return eps
}

// LoadPlan reads the plan of an existing fleet; os.ErrNotExist if none.
func (d *Dev) LoadPlan() (Plan, error) {
	b, err := os.ReadFile(d.planPath())
	if err != nil {
		return Plan{}, err
	}
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return Plan{}, fmt.Errorf("read %s: %w (run `pgfleet dev down --purge` to start afresh)", d.planPath(), err)
	}
	return p, nil
}

// Up starts every host of the fleet that is not running, in order, and
// returns once all of them serve the API and have registered. The first
// three hosts become etcd voters one at a time, which keeps quorum at every
// step. Running it again on a running fleet changes nothing; on a fleet
// some of whose agents died, it restarts those.
func (d *Dev) Up(ctx context.Context, want Plan, explicit bool) (Plan, string, error) {
	p, err := d.LoadPlan()
	switch {
	case errors.Is(err, os.ErrNotExist):
		p = want
	case err != nil:
		return Plan{}, "", err
	case explicit && p.Regions != want.Regions:
		return Plan{}, "", fmt.Errorf("a dev fleet with regions %q already exists in %s: run `pgfleet dev down --purge` first to start one with regions %q", p.Regions, d.Dir, want.Regions)
	}
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return Plan{}, "", fmt.Errorf("create %s: %w", d.Dir, err)
	}
	if err := os.Chmod(d.Dir, 0o755); err != nil {
		return Plan{}, "", err
	}
	b, _ := json.MarshalIndent(p, "", "  ")
	if err := os.WriteFile(d.planPath(), b, 0o644); err != nil {
		return Plan{}, "", fmt.Errorf("save fleet plan: %w", err)
	}
	// Hosts that already have state restart together: an etcd voter alone
	// has no quorum, so none of them could get ready one at a time. New hosts
	// then join one by one, each becoming a voter (or client) in turn.
	var restart, fresh []HostPlan
	for _, h := range p.Hosts {
		if pid := d.runningPid(h); pid != 0 {
			d.printf("  %-8s %-4s %-12s already running (pid %d)\n", h.Name, h.Region, h.Addr, pid)
			continue
		}
		if _, err := os.Stat(filepath.Join(d.hostDir(h), "etcd")); err == nil {
			restart = append(restart, h)
		} else {
			fresh = append(fresh, h)
		}
	}
	pids := map[string]int{}
	start := time.Now()
	for _, h := range restart {
		pid, err := d.start(h, "", "")
		if err != nil {
			return Plan{}, "", err
		}
		pids[h.Name] = pid
	}
	for _, h := range restart {
		if err := d.waitHealthy(ctx, h, pids[h.Name]); err != nil {
			return Plan{}, "", err
		}
		d.printf("  %-8s %-4s %-12s restarted in %s (pid %d)\n", h.Name, h.Region, h.Addr, time.Since(start).Round(time.Millisecond), pids[h.Name])
	}
	var join string // a join token, once the first host runs
	for _, h := range fresh {
		start := time.Now()
		if h != p.Hosts[0] && join == "" {
			if join, err = d.joinToken(ctx, p); err != nil {
				return Plan{}, "", err
			}
		}
		j := join
		if h == p.Hosts[0] {
			j = "" // the first host bootstraps the fleet
		}
		pid, err := d.start(h, p.Hosts[0].API(), j)
		if err != nil {
			return Plan{}, "", err
		}
		if err := d.waitHealthy(ctx, h, pid); err != nil {
			return Plan{}, "", err
		}
		d.printf("  %-8s %-4s %-12s started in %s (pid %d)\n", h.Name, h.Region, h.Addr, time.Since(start).Round(time.Millisecond), pid)
	}
	token, err := d.token(p)
	if err != nil {
		return Plan{}, "", err
	}
	c, err := d.Client(p, token)
	if err != nil {
		return Plan{}, "", err
	}
	if err := WaitHosts(ctx, c, len(p.Hosts)); err != nil {
		return Plan{}, "", err
	}
	return p, token, nil
}

// token reads the fleet's API token from the first host, which made it.
func (d *Dev) token(p Plan) (string, error) {
	tok, err := os.ReadFile(agent.TokenPath(d.hostDir(p.Hosts[0])))
	if err != nil {
		return "", fmt.Errorf("read the fleet's API token: %w", err)
	}
	return strings.TrimSpace(string(tok)), nil
}

// CAPath is where the fleet's CA certificate is: on the first host, which
// made it.
func (d *Dev) CAPath(p Plan) string { return agent.CAPath(d.hostDir(p.Hosts[0])) }

// CA returns the fleet's CA, which the API's clients verify agents with.
func (d *Dev) CA(p Plan) (*x509.CertPool, error) {
	b, err := os.ReadFile(d.CAPath(p))
	if err != nil {
		return nil, fmt.Errorf("read the fleet's CA: %w", err)
	}
	return pki.Pool(b)
}

// Client returns an API client of the fleet that verifies its agents.
func (d *Dev) Client(p Plan, token string) (*api.Client, error) {
	ca, err := d.CA(p)
	if err != nil {
		return nil, err
	}
	c := api.NewClient(Endpoints(p), token, ca)
	c.CAFile = d.CAPath(p)
	return c, nil
}

// joinToken makes a join token for the hosts that join the first one.
func (d *Dev) joinToken(ctx context.Context, p Plan) (string, error) {
	// The first agent serves its API a moment before it has made the
	// fleet's API token.
	var token string
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if token, err = d.token(p); err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return "", err
	}
	c, err := d.Client(p, token)
	if err != nil {
		return "", err
	}
	t, err := c.CreateJoinToken(ctx, 10*time.Minute)
	if err != nil {
		return "", fmt.Errorf("make a join token: %w", err)
	}
	return t.Token, nil
}

// runningPid returns the pid of h's agent if it is running, else 0. The pid
// file alone is not trusted: the process must be a pgfleet agent for h.
func (d *Dev) runningPid(h HostPlan) int {
	b, err := os.ReadFile(d.pidPath(h))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	args := strings.Split(string(cmdline), "\x00")
	for i, a := range args {
		if a == "--data-dir" && i+1 < len(args) && args[i+1] == d.hostDir(h) {
			return pid
		}
	}
	return 0
}

// start starts h's agent; with a join token it joins the fleet through the
// agent at joinAPI. The token goes in the environment, not on the command
// line, which every user of the machine can read.
func (d *Dev) start(h HostPlan, joinAPI, joinToken string) (int, error) {
	args := []string{"agent", "--name", h.Name, "--region", h.Region, "--advertise", h.Addr,
		"--data-dir", d.hostDir(h), "--api-listen", h.API()}
	if joinToken != "" {
		args = append(args, "--join", joinAPI)
	}
	// One store for the whole dev fleet, so that any host can restore what
	// another backed up.
	args = append(args, "--backup-store", "file://"+filepath.Join(d.Dir, "backups"))
	if d.PGBin != "" {
		args = append(args, "--pg-bin", d.PGBin)
	}
	logf, err := os.OpenFile(d.logPath(h), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open agent log: %w", err)
	}
	defer logf.Close()
	argv := append([]string{d.Exe}, args...)
	if d.Wrap != nil {
		argv = append(d.Wrap(h), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if joinToken != "" {
		cmd.Env = append(os.Environ(), "PGFLEET_JOIN_TOKEN="+joinToken)
	}
	// A session of its own: the agent outlives this command and a Ctrl-C in
	// the terminal that ran it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start agent %s: %w", h.Name, err)
	}
	pid := cmd.Process.Pid
	if err := os.WriteFile(d.pidPath(h), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		cmd.Process.Kill()
		return 0, fmt.Errorf("save agent pid: %w", err)
	}
	go cmd.Wait() // reap it if it exits while we wait for it
	return pid, nil
}

// waitHealthy waits until h's API answers and its store has quorum.
func (d *Dev) waitHealthy(ctx context.Context, h HostPlan, pid int) error {
	deadline := time.Now().Add(90 * time.Second)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return fmt.Errorf("agent %s exited; the end of its log (%s):\n%s", h.Name, d.logPath(h), d.hostLog(h))
		}
		// The host's CA file appears once it made the fleet's CA or joined.
		if b, err := os.ReadFile(agent.CAPath(d.hostDir(h))); err != nil {
			last = "no certificate yet"
		} else if ca, err := pki.Pool(b); err != nil {
			last = err.Error()
		} else {
			c := api.NewClient([]string{h.API()}, "", ca)
			c.HTTP.Timeout = 2 * time.Second
			if _, err := c.Health(ctx); err == nil {
				return nil
			} else {
				last = err.Error()
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("agent %s did not become ready in 90s (last: %s); the end of its log (%s):\n%s", h.Name, last, d.logPath(h), d.hostLog(h))
}

// WaitHosts waits until the fleet lists n live hosts.
func WaitHosts(ctx context.Context, c *api.Client, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		hs, err := c.Hosts(ctx)
		if err == nil && len(hs) >= n {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%d of %d hosts registered", len(hs), n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("fleet not ready after 30s: %s", last)
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie (exited, not yet reaped) is not alive.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// Down stops every agent of the fleet (they stop their postgres first) and,
// with purge, deletes the fleet's directory.
func (d *Dev) Down(purge bool) error {
	p, err := d.LoadPlan()
	if errors.Is(err, os.ErrNotExist) {
		d.printf("no dev fleet in %s\n", d.Dir)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: stop its agents by hand before deleting %s", err, d.Dir)
	}
	// All at once: each agent stops its postgres before its part of etcd,
	// so the store keeps quorum while the members leave cleanly.
	pids := map[string]int{}
	for _, h := range p.Hosts {
		if pid := d.runningPid(h); pid != 0 {
			pids[h.Name] = pid
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	for _, h := range p.Hosts {
		pid, ok := pids[h.Name]
		if !ok {
			continue
		}
		if err := stop(pid, 45*time.Second); err != nil {
			return fmt.Errorf("stop agent %s: %w", h.Name, err)
		}
		os.Remove(d.pidPath(h))
		d.printf("  %-8s stopped\n", h.Name)
	}
	if purge {
		if err := os.RemoveAll(d.Dir); err != nil {
			return fmt.Errorf("purge %s: %w", d.Dir, err)
		}
		d.printf("removed %s\n", d.Dir)
	}
	return nil
}

// stop sends SIGTERM and waits for exit, then SIGKILL.
func stop(pid int, grace time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil // already gone
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 50 && alive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(pid) {
		return fmt.Errorf("pid %d did not exit", pid)
	}
	return nil
}

// Tail returns the last n lines of a file, for error messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
