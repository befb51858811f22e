#!/usr/bin/python3
"""The Patroni side of bench/operations/run.sh: three Patroni 3.0 members and
etcd, started with the peers' harness (../shared/peers/patroni_harness.py,
imported as a module, on ports of our own so that a failover benchmark can
run beside it), TLS and a SCRAM user for the writers as pgfleet has, HAProxy
routing to the member whose Patroni answers 200 on /primary, and the two
ways of restarting them that the benchmark times.

    patroni.py up            start etcd, n1 (bootstrap), n2, n3 and HAProxy; print the HAProxy
                             URL and the members' multi-host URL
    patroni.py rolling       restart members one at a time, pgfleet's order: each replica
                             (`patronictl restart C M --force`), back and streaming before
                             the next; `patronictl switchover --force`; then the old leader
    patroni.py restart-all   `patronictl restart C --force`, as it comes, then wait until every
                             member is back and streaming
    patroni.py down          stop what `up` started, by the PIDs it recorded

Run as root with /usr/bin/python3 (Debian's psycopg2); Patroni and etcd run
as the postgres user under $PEERS_BASE.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get('PEERS_DIR', os.path.join(HERE, '../../../shared/peers')))
os.environ.setdefault('PEERS_BASE', '/tmp/pgfleet-bench-operations-patroni')
import patroni_harness as h  # noqa: E402

# Ports of our own on 127.0.0.1, away from the 54xx that other benchmarks'
# postgres take: the peers' failover script uses 5441-5443, 8441-8443 and
# 23791/23801.
h.PG_PORT = {'n1': 15461, 'n2': 15462, 'n3': 15463}
h.API_PORT = {'n1': 18461, 'n2': 18462, 'n3': 18463}
h.ETCD_CLIENT, h.ETCD_PEER = 23796, 23806
h.SCOPE = 'opsbench'
HAPROXY_PORT = 15460
WRITER, WRITER_PASSWORD = 'opsbench', 'opsbench-writer'
# Patroni's defaults, as a user gets them.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 30, 10, 10
TIMEOUT = 180


def step(msg):
    print(msg, flush=True)


def haproxy_cfg():
    servers = '\n'.join(
        f'    server {m} 127.0.0.1:{h.PG_PORT[m]} check port {h.API_PORT[m]}' for m in h.MEMBERS)
    # Patroni's documented HAProxy setup (health check OPTIONS /primary on
    # the REST API, sessions of a server marked down shut), with checks
    # faster than its example's (inter 3s fall 3 rise 2): a server that is
    # down is checked every 250 ms and one good answer brings it up.
    return f"""global
    maxconn 500
defaults
    mode tcp
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout check 1s
listen primary
    bind 127.0.0.1:{HAPROXY_PORT}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 250ms rise 1 fall 2 on-marked-down shutdown-sessions
{servers}
"""


def up():
    for port in list(h.PG_PORT.values()) + list(h.API_PORT.values()) + [h.ETCD_CLIENT, h.ETCD_PEER, HAPROXY_PORT]:
        r = subprocess.run(['ss', '-Htln', f'sport = :{port}'], capture_output=True, text=True)
        if r.stdout.strip():
            raise SystemExit(f'port {port} is in use on this machine: {r.stdout.strip()}')
    h.prepare_dirs()
    # The writers connect as pgfleet's do: TLS and a SCRAM password, so
    # that a connection costs the same on both sides. The harness's own
    # checks keep connecting as postgres without a password.
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=opsbench',
                    '-keyout', f'{h.BASE}/server.key', '-out', f'{h.BASE}/server.crt'], check=True, capture_output=True)
    os.chmod(f'{h.BASE}/server.key', 0o600)
    subprocess.run(['chown', 'postgres:postgres', f'{h.BASE}/server.key', f'{h.BASE}/server.crt'], check=True)
    h.start_etcd()
    for m in h.MEMBERS:
        h.write_conf(m, TTL, LOOP_WAIT, RETRY_TIMEOUT, False)
        with open(h.conf_path(m)) as f:
            conf = json.load(f)
        conf['postgresql']['parameters'].update(
            {'ssl': 'on', 'ssl_cert_file': f'{h.BASE}/server.crt', 'ssl_key_file': f'{h.BASE}/server.key'})
        conf['postgresql']['pg_hba'] = [
            f'hostssl all {WRITER} 127.0.0.1/32 scram-sha-256',
            f'host all {WRITER} 127.0.0.1/32 reject',
        ] + conf['postgresql']['pg_hba']
        with open(h.conf_path(m), 'w') as f:
            json.dump(conf, f, indent=1)
    t0 = time.monotonic()
    h.start_patroni('n1')
    while h.in_recovery(h.PG_PORT['n1']) is not False:
        if time.monotonic() - t0 > 120:
            raise SystemExit('n1 did not bootstrap')
        time.sleep(0.5)
    h.start_patroni('n2')
    h.start_patroni('n3')
    leader = h.wait_healthy(False)
    c = h.pg_connect(h.PG_PORT[leader])
    c.autocommit = True
    c.cursor().execute(f"CREATE ROLE {WRITER} LOGIN SUPERUSER PASSWORD '{WRITER_PASSWORD}'")
    c.close()
    with open(f'{h.BASE}/haproxy.cfg', 'w') as f:
        f.write(haproxy_cfg())
    subprocess.run(['haproxy', '-f', f'{h.BASE}/haproxy.cfg', '-D', '-p', f'{h.BASE}/pids/haproxy.pid'], check=True)
    url = f'postgres://{WRITER}:{WRITER_PASSWORD}@127.0.0.1:{HAPROXY_PORT}/postgres?sslmode=require'
    for _ in range(100):
        if subprocess.run(['psql', url, '-Atqc', 'select 1'], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise SystemExit('HAProxy did not route to the leader')
    print(f'leader {leader}, up in {time.monotonic() - t0:.1f}s', file=sys.stderr)
    hosts = ','.join(f'127.0.0.1:{h.PG_PORT[m]}' for m in h.MEMBERS)
    print(url)
    print(f'postgres://{WRITER}:{WRITER_PASSWORD}@{hosts}/postgres?sslmode=require&target_session_attrs=read-write')


def patronictl(*args):
    r = subprocess.run(['/usr/bin/patronictl', '-c', h.conf_path('n1'), *args],
                       capture_output=True, text=True, timeout=TIMEOUT)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0 or 'Failed' in out:
        raise SystemExit(f'patronictl {" ".join(args)}: rc {r.returncode}: {out}')
    return out


def leader_now():
    for m in h.MEMBERS:
        st, _ = h.api(m, 'primary')
        if st == 200:
            return m
    return None


def wait_back(leader, ms):
    """Waits until the members ms are running replicas streaming from leader,
    and leader answers as primary: pgfleet's 'back and streaming'."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT:
        if h.api(leader, 'primary')[0] == 200 and all(h.api(m, 'patroni')[1].get('state') == 'running' for m in ms):
            try:
                c = h.pg_connect(h.PG_PORT[leader])
                cur = c.cursor()
                cur.execute("select application_name from pg_stat_replication where state = 'streaming'")
                streaming = {r[0] for r in cur.fetchall()}
                c.close()
                if set(ms) <= streaming:
                    return
            except Exception:
                pass
        time.sleep(0.25)
    raise SystemExit(f'{ms} not back and streaming from {leader} in {TIMEOUT}s')


def rolling():
    t0 = time.monotonic()
    leader = leader_now()
    if leader is None:
        raise SystemExit('no leader')
    for m in [m for m in h.MEMBERS if m != leader]:
        t = time.monotonic()
        patronictl('restart', h.SCOPE, m, '--force')
        wait_back(leader, [m])
        step(f'restarted {m} in {time.monotonic() - t:.1f}s')
    out = patronictl('switchover', '--force')
    new = None
    t = time.monotonic()
    while time.monotonic() - t < TIMEOUT:
        new = leader_now()
        if new not in (None, leader):
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f'no new leader after switchover: {out}')
    step(f'switched over from {leader} to {new}')
    t = time.monotonic()
    wait_back(new, [leader])  # the old leader back as a replica first
    patronictl('restart', h.SCOPE, leader, '--force')
    wait_back(new, [leader])
    step(f'restarted {leader} in {time.monotonic() - t:.1f}s')
    step(f'cluster restarted in {time.monotonic() - t0:.1f}s; {new} is the leader')


def restart_all():
    t0 = time.monotonic()
    leader = leader_now()
    # patronictl posts /restart to one member after the other and prints a
    # line as each returns: passed on as it comes, so the steps are timed.
    p = subprocess.Popen(['/usr/bin/patronictl', '-c', h.conf_path('n1'), 'restart', h.SCOPE, '--force'],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failed = []
    for line in p.stdout:
        if line.startswith(('Success', 'Failed')):  # not the table of members it prints first
            step(line.strip())
        if line.startswith('Failed'):
            failed.append(line.strip())
    if p.wait(TIMEOUT) != 0 or failed:
        raise SystemExit(f'patronictl restart: rc {p.returncode}: {" ".join(failed)}')
    new = None
    while time.monotonic() - t0 < TIMEOUT:
        new = leader_now()
        if new:
            break
        time.sleep(0.1)
    wait_back(new, [m for m in h.MEMBERS if m != new])
    step(f'cluster restarted in {time.monotonic() - t0:.1f}s; {new} is the leader (was {leader})')


def down():
    """Stops Patroni (which stops its postgres), then anything left of what
    up started, by the PIDs it recorded, and removes $PEERS_BASE."""
    pids = {}
    for name in h.MEMBERS + ['etcd', 'haproxy']:
        try:
            with open(f'{h.BASE}/pids/{name}.pid') as f:
                pids[name] = int(f.readline())
        except (OSError, ValueError):
            pass

    def ours(pid, word):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                return word.encode() in f.read()
        except OSError:
            return False

    for m in h.MEMBERS:
        if m in pids and ours(pids[m], 'patroni'):
            os.kill(pids[m], 15)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and any(m in pids and ours(pids[m], 'patroni') for m in h.MEMBERS):
        time.sleep(0.2)
    for m in h.MEMBERS:
        if m in pids and ours(pids[m], 'patroni'):
            os.kill(pids[m], 9)
        pm = h.postmaster_pid(m)
        if pm and ours(pm, f'{h.BASE}/data'):
            for pid in [pm] + h.children_of(pm):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
    for name, word in (('etcd', 'etcd'), ('haproxy', 'haproxy')):
        if name in pids and ours(pids[name], word):
            os.kill(pids[name], 15)
    time.sleep(0.5)
    if os.environ.get('KEEP_LOGS') and os.path.isdir(f'{h.BASE}/logs'):
        subprocess.run(['rm', '-rf', os.environ['KEEP_LOGS']])
        subprocess.run(['cp', '-r', f'{h.BASE}/logs', os.environ['KEEP_LOGS']])
    subprocess.run(['rm', '-rf', h.BASE])


if __name__ == '__main__':
    {'up': up, 'rolling': rolling, 'restart-all': restart_all, 'down': down}[sys.argv[1]]()
