"""The remote queue's persistent retry state and `ternctl queue` through the
control socket: a ternd whose smarthost is a closed loopback port (every
attempt is refused, so every recipient is deferred), restarted to check
that attempts, next try and holds survive, and driven with list, show,
retry, hold, release and delete."""

import json
import os
import re
import socket
import stat
import subprocess
import time
import uuid

import pytest

from conftest import SLOW, TERNCTL, free_ports, make_message, send_mail as _send_mail


def ctl(t, *args, check=True):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=30 * SLOW, text=True)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def send(t, rcpts, marker):
    c = t.connect()
    try:
        r = _send_mail(c, "alice@example.test", rcpts, make_message(subject=marker))
    finally:
        c.cmd("QUIT")
    assert r.code == 250, r
    return r.qid


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def show(t, qid):
    p = ctl(t, "queue", "show", qid, "--json")
    ans = json.loads(p.stdout)
    assert ans["ok"], ans
    return ans["result"]


def deferred(t, qid, attempts, since=None):
    return re.search(rf"event=deferred qid={qid} rcpt=\S+ attempts={attempts} ", t.log(since))


RETRY_S = 6


def make_tx(tern_factory, **queue):
    closed = free_ports(1)[0]   # nothing listens there: connect refused
    t = tern_factory({
        "queue": {"hold": False, "smarthost": f"[127.0.0.1]:{closed}",
                  "retry_min": f"{RETRY_S}s", "retry_max": f"{RETRY_S}s",
                  "connect_timeout": "2s", **queue},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "processors": {
            "root": [{"match": "All", "mailet": "RemoteDelivery"}],
            "transport": [{"match": "All", "mailet": "LocalDelivery"}],
            "error": [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
    }, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    t.closed_port = closed
    return t


@pytest.fixture
def tx(tern_factory):
    return make_tx(tern_factory)


def test_retry_state_survives_a_restart(tx):
    qid = send(tx, ["carol@far.test"], uuid.uuid4().hex)
    assert wait_for(lambda: deferred(tx, qid, 1)), tx.log_tail()
    t_deferred = time.monotonic()
    r = show(tx, qid)["recipients"]
    assert len(r) == 1 and r[0]["state"] == "deferred" and r[0]["attempts"] == 1, r
    assert r[0]["next_try"] > time.time() and "127.0.0.1" in r[0]["last_error"], r
    # The record shares the next group commit: give it that.
    time.sleep(0.3)
    tx.stop()
    tx.start()
    assert re.search(rf"event=restored qid={qid} rcpt=carol@far.test attempts=1 ", tx.log()), \
        tx.log_tail()
    r = show(tx, qid)["recipients"]
    assert r[0]["state"] == "deferred" and r[0]["attempts"] == 1, r
    assert "127.0.0.1" in r[0]["last_error"], r
    # Not retried at once: nothing before the back-off from the first
    # attempt has run out...
    while time.monotonic() < t_deferred + RETRY_S - 1.5:
        assert not re.search(rf"qid={qid} .*attempts=2", tx.log()), tx.log_tail()
        time.sleep(0.1)
    # ... then the count goes on from where it was.
    assert wait_for(lambda: deferred(tx, qid, 2)), tx.log_tail()
    assert show(tx, qid)["recipients"][0]["attempts"] == 2


def test_list_hold_release_retry_delete(tx):
    m1, m2 = uuid.uuid4().hex, uuid.uuid4().hex
    q1 = send(tx, ["dave@far.test"], m1)
    q2 = send(tx, ["erin@far.test", "frank@other.test"], m2)
    assert wait_for(lambda: deferred(tx, q1, 1) and deferred(tx, q2, 1)), tx.log_tail()
    out = ctl(tx, "queue", "list").stdout
    assert re.search(rf"^{q1} age=\d+s size=\d+ from=<alice@example.test>$", out, re.M), out
    assert re.search(r"^  erin@far.test state=deferred attempts=1 next_try=\S+Z last_error=", out,
                     re.M), out
    assert "frank@other.test" in out and "dave@far.test" in out

    ctl(tx, "queue", "hold", q1)
    assert f"{q1} " in ctl(tx, "queue", "show", q1).stdout
    assert "HELD" in ctl(tx, "queue", "show", q1).stdout
    assert show(tx, q1)["recipients"][0]["state"] == "held"
    # The hold survives a restart.
    time.sleep(0.3)
    tx.stop()
    tx.start()
    assert show(tx, q1)["held"] is True
    assert show(tx, q2)["held"] is False

    # retry --all: every waiting recipient is due now, but the held
    # message is not attempted.
    mark = tx.log_size()
    out = ctl(tx, "queue", "retry", "--all").stdout
    assert "recipient(s) due now" in out
    assert wait_for(lambda: deferred(tx, q2, 2, mark)), tx.log_tail()
    time.sleep(1)
    assert not re.search(rf"qid={q1} ", tx.log(mark).replace(f"event=admin_retry qid=all", "")), \
        tx.log(mark)
    assert show(tx, q1)["recipients"][0]["attempts"] == 1

    ctl(tx, "queue", "release", q1)
    ctl(tx, "queue", "retry", q1)
    assert wait_for(lambda: deferred(tx, q1, 2, mark)), tx.log_tail()

    # delete: ended without a bounce, the entry completes.
    assert wait_for(lambda: ctl(tx, "queue", "delete", q1, check=False).returncode == 0)
    assert re.search(rf"event=deleted qid={q1} rcpt=dave@far.test", tx.log(mark)), tx.log_tail()
    p = ctl(tx, "queue", "show", q1, check=False)
    assert p.returncode == 1 and "not in the queue" in p.stderr, p
    out = ctl(tx, "spool", "list", "-d", str(tx.state_dir)).stdout
    assert wait_for(lambda: q1 not in ctl(tx, "spool", "list", "-d", str(tx.state_dir)).stdout), out
    assert q2 in ctl(tx, "spool", "list", "-d", str(tx.state_dir)).stdout
    time.sleep(0.5)
    assert "event=bounce " not in tx.log(mark)
    # Unknown qids and bad usage.
    p = ctl(tx, "queue", "hold", "NOSUCHQID", check=False)
    assert p.returncode == 1 and "NOSUCHQID: not in the queue" in p.stderr
    assert ctl(tx, "queue", "retry", check=False).returncode == 2


def raw(path, data, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    s.connect(path)
    s.sendall(data)
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf


def test_control_socket(tx, tern_factory):
    path = str(tx.state_dir / "control.sock")
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    # Malformed and unknown requests get an error, not a crash.
    ans = json.loads(raw(path, b"not json\n"))
    assert ans["ok"] is False and "not JSON" in ans["error"]
    ans = json.loads(raw(path, b'{"cmd":"queue.frobnicate"}\n'))
    assert ans["ok"] is False and "unknown command" in ans["error"]
    ans = json.loads(raw(path, b'{"cmd":"queue.show"}\n'))
    assert ans["ok"] is False and "qid" in ans["error"]
    ans = json.loads(raw(path, b"x" * 5000))
    assert ans["ok"] is False and "too long" in ans["error"]
    # Two requests on one connection.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10 * SLOW)
    s.connect(path)
    s.sendall(b'{"cmd":"queue.list"}\n{"cmd":"queue.list"}\n')
    buf = b""
    while buf.count(b"\n") < 2:
        chunk = s.recv(65536)
        assert chunk
        buf += chunk
    s.close()
    assert all(json.loads(x)["ok"] for x in buf.splitlines())

    # A second server pointed at the live socket refuses to start.
    other = tern_factory({"server": {"control_socket": path}}, start=False)
    other.write_config()
    other.start(wait=False)
    assert other.wait_exit(20 * SLOW) not in (None, 0)
    assert "another server is running with it" in other.log()

    # A stale socket (the server died without cleaning up) is replaced.
    tx.kill9()
    assert os.path.exists(path)
    tx.start()
    assert "event=stale_socket_removed" in tx.log()
    assert ctl(tx, "queue", "list").returncode == 0


def hosts(t):
    p = ctl(t, "queue", "hosts", "--json")
    return {h["addr"]: h for h in json.loads(p.stdout)["result"]["hosts"]}


def test_circuit_breaker(tern_factory):
    t = make_tx(tern_factory, retry_min="1s", retry_max="1s", host_down_threshold=3,
                host_down_cooldown="5s", backend_connect_retries=1)
    addr = f"127.0.0.1:{t.closed_port}"
    qid = send(t, ["gina@far.test"], uuid.uuid4().hex)
    failed = lambda: len(re.findall(rf"event=host_failed qid=\S+ domain=\S+ peer=\S+ stage=connect",
                                    t.log()))
    # connect_retries=1: each attempt connects twice; the third failure in
    # a row opens the circuit (during the second attempt's retry).
    assert wait_for(lambda: re.search(rf"event=host_down addr={re.escape(addr)} failures=3 ",
                                      t.log())), t.log_tail()
    assert "event=connect_retry" in t.log()
    h = hosts(t)[addr]
    assert h["state"] == "down" and h["failures"] == 3 and h["down_until"] > time.time(), h
    out = ctl(t, "queue", "hosts").stdout
    assert re.search(rf"^{re.escape(addr)} state=down failures=3 down_until=\S+Z$", out, re.M), out
    # While down: attempts skip it without connecting, and the recipient is
    # deferred with the reason.
    n = failed()
    assert wait_for(lambda: len(re.findall(rf"event=host_skipped qid={qid} .*addr={re.escape(addr)}",
                                           t.log())) >= 2), t.log_tail()
    assert failed() == n
    assert re.search(rf"event=deferred qid={qid} .*circuit open", t.log()), t.log_tail()
    r = show(t, qid)["recipients"][0]
    assert "is down (circuit open" in r["last_error"], r
    assert not re.search(r"event=host_probe", t.log())
    # After the cooldown: one probe, which fails and opens it again.
    assert wait_for(lambda: re.search(rf"event=host_probe qid={qid} addr={re.escape(addr)}",
                                      t.log()), timeout=15), t.log_tail()
    assert wait_for(lambda: re.search(rf"event=host_down addr={re.escape(addr)} failures=4 ",
                                      t.log())), t.log_tail()
    assert failed() == n + 1
    assert hosts(t)[addr]["state"] == "down"


def test_circuit_closes_when_the_host_answers(tern_factory):
    """A probe that reaches a server closes the circuit: the message goes."""
    rx = tern_factory({"domains": ["far.test"], "smtp": {"verify_recipients": False},
                       "processors": {"root": [{"match": "All", "mailet": "LocalDelivery"}]}},
                      start=False, subdir="rx")
    t = make_tx(tern_factory, retry_min="1s", retry_max="1s", host_down_threshold=1,
                host_down_cooldown="3s")
    # Point the smarthost at where the receiver will listen, closed for now.
    rx.config["listeners"][0]["port"] = t.closed_port
    rx.write_config()
    addr = f"127.0.0.1:{t.closed_port}"
    qid = send(t, ["hank@far.test"], uuid.uuid4().hex)
    assert wait_for(lambda: re.search(rf"event=host_down addr={re.escape(addr)} failures=1 ",
                                      t.log())), t.log_tail()
    rx.start()
    assert wait_for(lambda: re.search(rf"event=delivered qid={qid} ", t.log()),
                    timeout=20), t.log_tail()
    assert re.search(rf"event=host_probe qid={qid} addr={re.escape(addr)}", t.log())
    assert re.search(rf"event=host_up addr={re.escape(addr)}", t.log())
    assert hosts(t)[addr]["state"] == "up"


def maildir_notices(t, marker):
    out = []
    for f in (t.state_dir / "mail").rglob("*"):
        s = str(f)
        if f.is_file() and ("/new/" in s or "/cur/" in s) and "/alice/" in s:
            data = f.read_bytes()
            if marker.encode() in data and b"multipart/report" in data:
                out.append(data.decode("utf-8", "replace"))
    return out


def test_delay_dsn_once_per_recipient(tern_factory):
    t = make_tx(tern_factory, retry_min="1s", retry_max="1s", delay_warning="2s")
    marker = uuid.uuid4().hex
    c = t.connect()
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        assert c.cmd("RCPT TO:<ivy@far.test> NOTIFY=DELAY,FAILURE "
                     "ORCPT=rfc822;ivy@far.test").code == 250
        assert c.cmd("RCPT TO:<jack@far.test> NOTIFY=FAILURE").code == 250
        r = c.data(make_message(subject=marker))
        assert r.code == 250
        qid = r.qid
    finally:
        c.cmd("QUIT")
    got = wait_for(lambda: maildir_notices(t, marker), timeout=20)
    assert got, t.log_tail()
    body = got[0]
    assert "Action: delayed" in body and "Final-Recipient: rfc822; ivy@far.test" in body
    assert "jack@far.test" not in body.split("Content-Type: message/delivery-status")[1] \
        .split("--")[0]
    assert "Status: 4." in body and "Delayed Mail" in body
    assert re.search(rf"event=delay_dsn qid={qid} rcpt=ivy@far.test", t.log())
    # More deferrals and a restart: no second notice.
    n = len(re.findall(rf"event=deferred qid={qid} rcpt=ivy", t.log()))
    assert wait_for(lambda: len(re.findall(rf"event=deferred qid={qid} rcpt=ivy", t.log())) >= n + 1)
    time.sleep(0.3)
    t.stop()
    t.start()
    assert wait_for(lambda: deferred(t, qid, r"\d+"))
    time.sleep(2.5 * SLOW)
    assert len(maildir_notices(t, marker)) == 1
    assert "event=delay_dsn" not in t.log()
    assert t.running()


V6_ZONE = """$ORIGIN remote.test.
$TTL 60
@       IN SOA ns.remote.test. hostmaster.remote.test. 1 3600 600 86400 60
@       IN NS  ns.remote.test.
ns      IN A   127.0.0.1
v6      IN MX  10 mx6.remote.test.
mx6     IN AAAA ::1
dual    IN MX  10 mxd.remote.test.
mxd     IN AAAA ::1
mxd     IN A   127.0.0.1
"""


@pytest.fixture
def dns6(tmp_path):
    import sys
    from conftest import ROOT
    zone = tmp_path / "remote.zone"
    zone.write_text(V6_ZONE)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "dns" / "server.py"), str(zone),
                             "--lifetime", str(120 * SLOW)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield port
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def v6_pair(tern_factory, dns_port, family, rx_addr="::1"):
    from conftest import have_ipv6
    if not have_ipv6():
        pytest.skip("no ::1 on this machine")
    rx = tern_factory({"domains": ["v6.remote.test", "dual.remote.test"],
                       "smtp": {"verify_recipients": False},
                       "processors": {"root": [{"match": "All", "mailet": "LocalDelivery"}]}},
                      start=False, subdir="rx")
    port = free_ports(1, socket.AF_INET6, "::1")[0]
    rx.config["listeners"] = [{"name": "mx", "protocol": "smtp", "address": rx_addr, "port": port}]
    rx.write_config()
    rx.start()
    tx = tern_factory({
        "dns": {"resolvers": [f"127.0.0.1@{dns_port}"], "dnssec": False, "unblock_zones": ["test"]},
        "queue": {"hold": False, "port": port, "retry_min": "1s", "connect_timeout": "2s",
                  "address_family": family},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
    }, start=True, subdir="tx")
    return tx, rx


def test_ipv6_mx(tern_factory, dns6):
    tx, rx = v6_pair(tern_factory, dns6, "any")
    q1 = send(tx, ["kim@v6.remote.test"], uuid.uuid4().hex)
    q2 = send(tx, ["lou@dual.remote.test"], uuid.uuid4().hex)
    for q in (q1, q2):
        line = wait_for(lambda: re.search(rf"event=delivered qid={q} .*", tx.log()))
        assert line and "::1" in line.group(0), tx.log_tail()
    assert tx.running() and rx.running()


def test_ipv4_only_skips_aaaa(tern_factory, dns6):
    tx, rx = v6_pair(tern_factory, dns6, "ipv4")
    q1 = send(tx, ["kim@v6.remote.test"], uuid.uuid4().hex)
    q2 = send(tx, ["lou@dual.remote.test"], uuid.uuid4().hex)
    assert wait_for(lambda: re.search(rf"event=deferred qid={q1} .*no address for mx6.remote.test",
                                      tx.log())), tx.log_tail()
    # dual: only its A record is tried, where nothing listens.
    assert wait_for(lambda: re.search(rf"event=deferred qid={q2} .*127.0.0.1", tx.log())), \
        tx.log_tail()
    assert not re.search(rf"qid={q2} .*::1", tx.log())
    assert tx.running()


def test_next_address_when_ipv6_fails(tern_factory, dns6):
    """dual's AAAA (::1) refuses: the interleaved A (127.0.0.1) takes it."""
    tx, rx = v6_pair(tern_factory, dns6, "any", rx_addr="127.0.0.1")
    q = send(tx, ["max@dual.remote.test"], uuid.uuid4().hex)
    line = wait_for(lambda: re.search(rf"event=delivered qid={q} .*", tx.log()))
    assert line and "127.0.0.1" in line.group(0), tx.log_tail()
    assert re.search(rf"event=host_failed qid={q} domain=dual.remote.test peer=\S*::1\S* "
                     r"stage=connect", tx.log()), tx.log_tail()
    assert tx.running()
