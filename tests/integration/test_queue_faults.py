"""Remote delivery against misbehaving servers: a sending ternd resolves MX
records of *.faults.test from the loopback DNS server (tests/dns/server.py)
to loopback addresses where fault_smtp.FaultSMTP (or Postfix's smtp-sink)
plays the remote MX, one behaviour per test: refused connections, a
silent server, 4xx banners, 4xx/5xx to RCPT, a 5xx after DATA, a
connection dropped in the middle of DATA, no STARTTLS, and a kill -9 of
ternd while a DATA reply is held back. What the sender did is read from its
log, its spool and the sender's mailbox (bounces are DSNs delivered
locally)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, SLOW, TERNCTL, free_ports, make_message, send_mail as _send_mail
from fault_smtp import FaultSMTP

DNS_SERVER = ROOT / "tests" / "dns" / "server.py"
SMTP_SINK = "/usr/sbin/smtp-sink"

# The fault servers' addresses (all on the one queue.port).
A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"

ZONE = f"""$ORIGIN faults.test.
$TTL 60
@       IN SOA ns.faults.test. hostmaster.faults.test. 1 3600 600 86400 60
@       IN NS  ns.faults.test.
ns      IN A   127.0.0.1
mx-a    IN A   {A}
mx-b    IN A   {B}
mx-c    IN A   {C}
one     IN MX  10 mx-a.faults.test.
other   IN MX  10 mx-b.faults.test.
two     IN MX  10 mx-a.faults.test.
two     IN MX  20 mx-b.faults.test.
sink    IN MX  10 mx-c.faults.test.
"""


@pytest.fixture
def dns(tmp_path):
    zone = tmp_path / "faults.zone"
    zone.write_text(ZONE)
    proc = subprocess.Popen([sys.executable, str(DNS_SERVER), str(zone), "--lifetime",
                             str(180 * SLOW)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    port = int(proc.stdout.readline())
    yield port
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def mx_port():
    """The destination port (queue.port) every fault server listens on."""
    return free_ports(1)[0]


@pytest.fixture
def faults(mx_port):
    """faults(host, **behaviour) -> a started FaultSMTP; all closed at the end."""
    made = []

    def make(host, **kw):
        s = FaultSMTP(host, mx_port, name=f"mx{host.rsplit('.', 1)[1]}.faults.test", **kw)
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.close()


def ctl(t, *args):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)


@pytest.fixture
def sender(tern_factory, dns, mx_port):
    """sender(**queue) -> a running ternd that relays everything to the
    remote queue (MX lookups on the loopback DNS server, queue.port =
    mx_port) and delivers bounces to alice@example.test locally."""
    def make(**queue):
        t = tern_factory({
            "dns": {"resolvers": [f"127.0.0.1@{dns}"], "dnssec": False,
                    "unblock_zones": ["test"]},
            "queue": {"hold": False, "port": mx_port, "retry_min": "1s", "retry_max": "2s",
                      "connect_timeout": "2s", "command_timeout": f"{5 * SLOW}s", **queue},
            "smtp": {"relay_networks": ["127.0.0.0/8"]},
            "processors": {
                "root": [{"match": "All", "mailet": "RemoteDelivery"}],
                # Bounces enter at `transport`: the sender is local here.
                "transport": [{"match": "All", "mailet": "LocalDelivery"}],
                "error": [{"match": "All", "mailet": "RemoteDelivery"}],
                "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
            },
        }, start=False, subdir="tx")
        t.write_config()
        ctl(t, "account", "add", "alice@example.test")
        t.start()
        return t
    return make


def send(t, rcpts, marker):
    c = t.connect()
    try:
        r = _send_mail(c, "alice@example.test", rcpts,
                       make_message(subject=marker, body=f"{marker}\r\n.a dot line\r\n"))
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


def log_line(t, pattern, timeout=20.0):
    m = wait_for(lambda: re.search(pattern, t.log(0)), timeout)
    assert m, f"no log line matching {pattern!r}:\n" + t.log_tail()
    return m.group(0)


def dsns(t, marker):
    """The bounces in alice's mailbox about the message marked `marker`."""
    out = []
    for f in (t.state_dir / "mail").rglob("*"):
        s = str(f)
        if f.is_file() and ("/new/" in s or "/cur/" in s) and "/alice/" in s:
            data = f.read_bytes()
            if marker.encode() in data and b"multipart/report" in data:
                out.append(data.decode("utf-8", "replace"))
    return out


def drained(t):
    return wait_for(lambda: t.spool_count() == 0)


# ------------------------------------------------------------- temporary

def test_4xx_to_rcpt_is_deferred_retried_and_delivered_when_healed(sender, faults):
    srv = faults(A, rcpt="450 4.2.1 mailbox busy, try later")
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    line = log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=1 .*")
    assert "450 4.2.1 mailbox busy" in line, line
    # It comes back (retry_min 1s) and is still refused...
    log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=2 ")
    assert srv.connections >= 2 and not srv.delivered
    # ... until the server heals.
    srv.default = {}
    line = log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test .*")
    assert len(srv.delivered_with(marker)) == 1
    assert srv.delivered[0].rcpts == ["bob@one.faults.test"]
    assert b"\r\n.a dot line\r\n" in srv.delivered[0].data
    assert drained(tx)
    assert not dsns(tx, marker)


def test_421_banner_moves_on_to_the_next_mx(sender, faults):
    first = faults(A, banner="421 4.3.2 {name} closing, too busy")
    second = faults(B)
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@two.faults.test"], marker)
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@two\.faults\.test .*{re.escape(B)}")
    line = log_line(tx, rf"event=host_failed qid={qid} domain=two\.faults\.test "
                        rf"peer=[^ ]*{re.escape(A)}.*")
    assert "421" in line, line
    assert first.connections >= 1 and not first.transactions
    assert len(second.delivered_with(marker)) == 1
    assert drained(tx)


def test_refused_connection_moves_on_to_the_next_mx(sender, faults):
    # Nothing listens on A: the connection is refused.
    second = faults(B)
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@two.faults.test"], marker)
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@two\.faults\.test .*")
    log_line(tx, rf"event=host_failed qid={qid} domain=two\.faults\.test peer=[^ ]*{re.escape(A)}")
    assert len(second.delivered_with(marker)) == 1
    assert drained(tx)


def test_refused_connection_is_reported_as_refused(sender):
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    line = log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=1 .*")
    assert "refused" in line, line


def test_refused_connection_everywhere_is_deferred(sender):
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=2 ")
    assert tx.spool_count() == 1
    assert not dsns(tx, marker)


def test_silent_server_times_out_and_is_deferred(sender, faults):
    srv = faults(A, banner=None)
    tx = sender(command_timeout="1s")
    marker = uuid.uuid4().hex
    t0 = time.monotonic()
    qid = send(tx, ["bob@one.faults.test"], marker)
    line = log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=1 .*")
    assert re.search(r"(?i)time", line), line
    assert time.monotonic() - t0 >= 0.9
    assert srv.connections >= 1 and not srv.transactions
    assert tx.spool_count() == 1
    # Healed: the next try delivers.
    srv.default = {}
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test ")
    assert len(srv.delivered_with(marker)) == 1
    assert drained(tx)


# A connection lost between the RCPT replies (250) and the reply to the
# final dot delivered nothing: the recipients must be retried, not logged
# delivered (the client reports them as not tried; it used to pass the
# RCPT 250 on as their result and the message was lost).
def test_drop_in_the_middle_of_data_is_deferred_then_delivered_once(sender, faults):
    # The first connection is cut (RST) after 40 bytes of the message; the
    # next ones are served normally.
    srv = faults(A, plan=[{"drop_data_after": 40}])
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=1 ")
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test attempts=2 ")
    assert srv.transactions[0].data is None          # the cut one never ended
    assert len(srv.delivered_with(marker)) == 1
    assert drained(tx)
    time.sleep(1.5 * SLOW)                           # longer than retry_min
    assert len(srv.delivered_with(marker)) == 1 and srv.connections == 2


def test_4xx_after_data_is_deferred_then_delivered(sender, faults):
    srv = faults(A, plan=[{"data": "451 4.3.0 local problem, try later"}])
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    line = log_line(tx, rf"event=deferred qid={qid} rcpt=bob@one\.faults\.test attempts=1 .*")
    assert "451 4.3.0 local problem" in line, line
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test attempts=2 ")
    assert len(srv.transactions) == 2 and len(srv.delivered_with(marker)) == 1
    assert drained(tx)
    assert not dsns(tx, marker)


# ------------------------------------------------------------- permanent

def test_550_to_rcpt_bounces_once_with_the_remote_reply(sender, faults):
    def rcpt(addr):
        return "550 5.1.1 <nobody@one.faults.test>: no such user" if addr.startswith("nobody@") \
            else "250 2.1.5 ok"
    srv = faults(A, rcpt=rcpt)
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["nobody@one.faults.test", "bob@one.faults.test"], marker)
    log_line(tx, rf"event=failed qid={qid} rcpt=nobody@one\.faults\.test status=5\.1\.1 ")
    got = wait_for(lambda: dsns(tx, marker))
    assert len(got) == 1, tx.log_tail()
    body = got[0]
    assert "Final-Recipient: rfc822; nobody@one.faults.test" in body
    assert "Action: failed" in body and "Status: 5.1.1" in body
    assert re.search(r"Diagnostic-Code: smtp; 550 5\.1\.1 <nobody@one\.faults\.test>: no such"
                     r"\s+user", body), body
    assert "bob@one.faults.test" not in body.split("text/rfc822-headers")[0].split(
        "message/delivery-status")[-1]
    # the other recipient went through, once
    assert [t.rcpts for t in srv.delivered_with(marker)] == [["bob@one.faults.test"]]
    assert drained(tx)
    time.sleep(1.5 * SLOW)
    assert len(dsns(tx, marker)) == 1


def test_552_after_data_bounces_with_the_remote_reply(sender, faults):
    srv = faults(A, data="552 5.3.4 message too big for {name}")
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    log_line(tx, rf"event=failed qid={qid} rcpt=bob@one\.faults\.test status=5\.3\.4 ")
    got = wait_for(lambda: dsns(tx, marker))
    assert len(got) == 1
    assert "Status: 5.3.4" in got[0]
    assert re.search(r"Diagnostic-Code: smtp; 552 5\.3\.4 message too big", got[0]), got[0]
    assert len(srv.transactions) == 1 and srv.transactions[0].data is not None
    assert not srv.delivered
    assert drained(tx)


def test_5xx_to_mail_from_bounces_every_recipient_in_one_dsn(sender, faults):
    srv = faults(A, mail="553 5.7.1 sender refused by {name}")
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test", "carol@one.faults.test"], marker)
    log_line(tx, rf"event=failed qid={qid} rcpt=bob@one\.faults\.test status=5\.7\.1 ")
    log_line(tx, rf"event=failed qid={qid} rcpt=carol@one\.faults\.test status=5\.7\.1 ")
    got = wait_for(lambda: dsns(tx, marker))
    assert len(got) == 1
    for who in ("bob", "carol"):
        assert f"Final-Recipient: rfc822; {who}@one.faults.test" in got[0]
    assert got[0].count("Status: 5.7.1") == 2
    assert re.search(r"Diagnostic-Code: smtp; 553 5\.7\.1 sender refused", got[0]), got[0]
    assert not srv.transactions
    assert drained(tx)


# ------------------------------------------------------------- TLS

def test_no_starttls_offered_is_delivered_in_clear(sender, faults):
    srv = faults(A)            # offers no STARTTLS (and cannot do TLS)
    tx = sender()
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    line = log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test .*")
    assert "no TLS" in line, line
    assert len(srv.delivered_with(marker)) == 1
    assert drained(tx)


# ------------------------------------------------------------- restart

@pytest.mark.timeout(120 * SLOW)
def test_kill9_while_data_reply_is_held(sender, faults):
    """Two recipients on two domains: one.faults.test acknowledges at once;
    other.faults.test holds its DATA reply. ternd is killed (SIGKILL)
    meanwhile and restarted: the held one is delivered, the acknowledged one
    is not sent again."""
    fast = faults(A)
    slow = faults(B, hold_data=True)
    tx = sender(command_timeout="60s")
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test", "carol@other.faults.test"], marker)
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test ")
    assert slow.holding.wait(20 * SLOW), slow.events
    assert len(fast.delivered_with(marker)) == 1
    # The spool writes "bob is done" on its own thread just after that log
    # line; let it land (the spool commits what is pending at once).
    time.sleep(1.0 * SLOW)
    tx.kill9()
    slow.default = {}          # the server heals for the next connection
    assert slow.wait(lambda: any("client left" in e[2] for e in slow.events), 10 * SLOW)
    tx.start()
    log_line(tx, rf"event=delivered qid={qid} rcpt=carol@other\.faults\.test ", timeout=30)
    assert [t.rcpts for t in slow.delivered_with(marker)] == [["carol@other.faults.test"]]
    assert drained(tx)
    # bob was acknowledged before the kill: not sent again.
    assert [t.rcpts for t in fast.delivered_with(marker)] == [["bob@one.faults.test"]]
    assert fast.connections == 1, fast.events
    assert not dsns(tx, marker)


def test_sighup_while_a_delivery_runs(sender, faults):
    """Two SIGHUPs that change the config while a delivery waits for its
    DATA reply: the delivery holds its snapshot (the client keeps pointers
    into it) and ends normally, once. The reply here comes late in the
    exchange; the pointers matter most before it (EHLO, AUTH), which this
    test does not stall."""
    slow = faults(A, hold_data=True)
    tx = sender(command_timeout="60s")
    marker = uuid.uuid4().hex
    qid = send(tx, ["bob@one.faults.test"], marker)
    assert slow.holding.wait(20 * SLOW), slow.events
    tx.reload({"server": {"hostname": "renamed.example.test"}})
    tx.reload({"server": {"hostname": "again.example.test"}})
    slow.release()
    log_line(tx, rf"event=delivered qid={qid} rcpt=bob@one\.faults\.test ")
    assert [t.rcpts for t in slow.delivered_with(marker)] == [["bob@one.faults.test"]]
    assert tx.running()
    assert drained(tx)


def test_per_destination_limit_and_no_starvation(sender, faults):
    """per_destination: 2 and a destination that holds every DATA reply:
    of six messages to it only two connections are open at once, the
    other four wait for a slot (no third connection), a message to another
    domain is delivered meanwhile, and once the slow one answers all six
    arrive, each once."""
    fast = faults(A)
    slow = faults(B, hold_data=True)
    tx = sender(per_destination=2, command_timeout="60s")
    marker = uuid.uuid4().hex
    qids = [send(tx, [f"u{i}@other.faults.test"], f"{marker}-{i}") for i in range(6)]
    assert slow.holding.wait(20 * SLOW), slow.events
    assert slow.wait(lambda: slow.connections >= 2, 10 * SLOW), slow.events
    time.sleep(1.0 * SLOW)
    assert slow.connections == 2, slow.events
    qfast = send(tx, ["bob@one.faults.test"], f"{marker}-fast")
    log_line(tx, rf"event=delivered qid={qfast} rcpt=bob@one\.faults\.test ")
    assert len(fast.delivered_with(f"{marker}-fast")) == 1
    slow.release()
    for i, qid in enumerate(qids):
        log_line(tx, rf"event=delivered qid={qid} rcpt=u{i}@other\.faults\.test ", timeout=30)
    for i in range(6):
        assert len(slow.delivered_with(f"{marker}-{i}")) == 1, i
    assert drained(tx)


def test_other_domain_retry_not_held_by_a_full_destination(sender, faults):
    """per_destination: 1, other.faults.test's one slot taken by a delivery
    whose DATA reply is held. A second message to both domains: its
    one.faults.test recipient is deferred once (451), and its retry goes
    when due, not when other.faults.test frees a slot."""
    fast = faults(A, plan=[{"rcpt": "451 4.3.0 try later"}])
    slow = faults(B, hold_data=True)
    tx = sender(per_destination=1, command_timeout="60s")
    marker = uuid.uuid4().hex
    send(tx, ["first@other.faults.test"], f"{marker}-first")
    assert slow.holding.wait(20 * SLOW), slow.events
    qid = send(tx, ["v@other.faults.test", "w@one.faults.test"], f"{marker}-both")
    log_line(tx, rf"event=deferred qid={qid} rcpt=w@one\.faults\.test ")
    log_line(tx, rf"event=delivered qid={qid} rcpt=w@one\.faults\.test ", timeout=15)
    assert slow.holding.is_set() and slow.connections == 1, slow.events
    slow.release()
    log_line(tx, rf"event=delivered qid={qid} rcpt=v@other\.faults\.test ", timeout=30)
    assert drained(tx)


# ------------------------------------------------------------- a real receiver

@pytest.mark.skipif(not shutil.which(SMTP_SINK), reason="Postfix's smtp-sink is not installed")
def test_delivered_to_smtp_sink(sender, mx_port, tmp_path):
    # smtp-sink runs as nobody (it must drop root), and pytest's tmp_path
    # is private to root: the dump goes to a directory of its own.
    top = Path(tempfile.mkdtemp(prefix="tern-sink."))
    os.chmod(top, 0o755)
    dump = top / "dump"
    dump.mkdir()
    shutil.chown(dump, "nobody")
    log = open(tmp_path / "sink.log", "wb")
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-d", f"{dump}/msg.", f"{C}:{mx_port}",
                             "10"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    try:
        assert wait_for(lambda: subprocess.run(["ss", "-Hltn", f"src {C}:{mx_port}"],
                                               capture_output=True, text=True).stdout.strip()
                        if shutil.which("ss") else (time.sleep(0.5) or True), 10)
        tx = sender()
        marker = uuid.uuid4().hex
        qid = send(tx, ["bob@sink.faults.test", "carol@sink.faults.test"], marker)
        log_line(tx, rf"event=delivered qid={qid} rcpt=carol@sink\.faults\.test ")
        log_line(tx, rf"event=delivered qid={qid} rcpt=bob@sink\.faults\.test ")
        files = wait_for(lambda: [f for f in dump.iterdir() if marker.encode() in f.read_bytes()])
        assert len(files) == 1, list(dump.iterdir())
        data = files[0].read_bytes()
        assert re.search(rb"\nX-Mail-Args: <alice@example\.test>", data), data
        assert re.search(rb"\nX-Rcpt-Args: <bob@sink\.faults\.test>", data), data
        assert re.search(rb"\nX-Rcpt-Args: <carol@sink\.faults\.test>", data), data
        assert b"\n.a dot line\n" in data.replace(b"\r\n", b"\n")
        assert drained(tx)
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(top, ignore_errors=True)
