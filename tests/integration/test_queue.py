"""Remote delivery through the queue manager: a sending ternd resolves MX
records from a DNS server on loopback (tests/dns/server.py) and delivers
over SMTP to a second ternd that plays the remote domain; failures come
back to the sender as RFC 3464 bounces in its mailbox, temporary ones are
deferred and kept in the spool."""

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, SLOW, TERNCTL, make_message, send_mail as _send_mail

SERVER = ROOT / "tests" / "dns" / "server.py"


def zone_text():
    return """$ORIGIN remote.test.
$TTL 60
@       IN SOA ns.remote.test. hostmaster.remote.test. 1 3600 600 86400 60
@       IN NS  ns.remote.test.
ns      IN A   127.0.0.1
@       IN MX  10 mx.remote.test.
mx      IN A   127.0.0.1
down    IN MX  10 mx.down.remote.test.
mx.down IN A   127.0.0.9
nullmx  IN MX  0 .
two     IN MX  10 mx.remote.test.
two     IN MX  20 mx2.remote.test.
mx2     IN A   127.0.0.1
twodown IN MX  10 mx.remote.test.
twodown IN MX  20 mx.down.remote.test.
"""


@pytest.fixture
def dns(tmp_path):
    zone = tmp_path / "remote.zone"
    zone.write_text(zone_text())
    proc = subprocess.Popen([sys.executable, str(SERVER), str(zone), "--lifetime",
                             str(120 * SLOW)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    port = int(proc.stdout.readline())
    yield port
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ctl(t, *args):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)


def send_mail(t, mail_from, rcpts, message):
    c = t.connect()
    try:
        return _send_mail(c, mail_from, rcpts, message)
    finally:
        c.cmd("QUIT")


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def maildir_find(t, local, domain, marker):
    out = []
    for f in (t.state_dir / "mail").rglob("*"):
        s = str(f)
        if f.is_file() and ("/new/" in s or "/cur/" in s) and f"/{domain}/" in s \
                and f"/{local}/" in s and marker.encode() in f.read_bytes():
            out.append(f)
    return out


def spool_count(t):
    p = subprocess.run([str(TERNCTL), "spool", "count", "-d", str(t.state_dir)],
                       capture_output=True, timeout=30)
    return int(p.stdout.split()[0])


LOCAL = {"processors": {
    "root": [{"match": "All", "mailet": "LocalDelivery"}],
    "error": [{"match": "All", "mailet": "RemoteDelivery"}],
    "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
}}


@pytest.fixture
def pair(tern_factory, dns):
    """(sender, receiver): the receiver is remote.test's MX."""
    rx = tern_factory({"domains": ["remote.test"], "smtp": {"verify_recipients": True},
                       **LOCAL}, start=False, subdir="rx")
    rx.write_config()
    ctl(rx, "account", "add", "bob@remote.test")
    rx.start()
    tx = tern_factory({
        "dns": {"resolvers": [f"127.0.0.1@{dns}"], "dnssec": False, "unblock_zones": ["test"]},
        "queue": {"hold": False, "port": rx.config["listeners"][0]["port"], "retry_min": "1s",
                  "connect_timeout": "2s"},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "processors": {
            "root": [{"match": "All", "mailet": "RemoteDelivery"}],
            # Bounces enter at `transport`: the sender is local here.
            "transport": [{"match": "All", "mailet": "LocalDelivery"}],
            "error": [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
    }, start=False, subdir="tx")
    tx.write_config()
    ctl(tx, "account", "add", "alice@example.test")
    tx.start()
    return tx, rx


def test_delivered_to_the_mx(pair):
    tx, rx = pair
    marker = uuid.uuid4().hex
    r = send_mail(tx, "alice@example.test", ["bob@remote.test"],
                  make_message(subject=marker, body=f"{marker}\r\n.leading dot line\r\n"))
    assert r.code == 250
    got = wait_for(lambda: maildir_find(rx, "bob", "remote.test", marker))
    assert got, tx.log_tail()
    data = got[0].read_bytes()
    assert b"\r\n.leading dot line\r\n" in data        # dot-stuffed and unstuffed
    # The receiver offers STARTTLS (its mx listener): the message went over
    # TLS, unverified (a test certificate for another name).
    # The receiver delivers before its 250, so the file can appear before
    # the sender has read that reply and logged it.
    line = wait_for(lambda: re.search(rf"event=delivered qid={r.qid} rcpt=bob@remote.test .*",
                                      tx.log(0)))
    assert line and "TLSv1.2 unverified" in line.group(0), line
    assert b"with ESMTPS" in data
    assert wait_for(lambda: spool_count(tx) == 0)


def test_permanent_failures_bounce_to_the_sender(pair):
    tx, rx = pair
    marker = uuid.uuid4().hex
    r = send_mail(tx, "alice@example.test",
                  ["nobody@remote.test", "x@nxdomain.remote.test", "y@nullmx.remote.test"],
                  make_message(subject=marker, body=f"{marker}\r\n"))
    assert r.code == 250
    dsn = wait_for(lambda: [f for f in maildir_find(tx, "alice", "example.test", marker)
                            if b"multipart/report" in f.read_bytes()])
    assert dsn, tx.log_tail()
    body = dsn[0].read_bytes().decode()
    assert "report-type=delivery-status" in body
    assert "Final-Recipient: rfc822; nobody@remote.test" in body
    assert "Status: 5.1.1" in body and "Diagnostic-Code: smtp; 550" in body
    assert "Final-Recipient: rfc822; x@nxdomain.remote.test" in body and "Status: 5.1.2" in body
    assert "Status: 5.1.10" in body
    assert "text/rfc822-headers" in body and f"Subject: {marker}" in body
    assert "Return-Path: <>" in body
    assert wait_for(lambda: spool_count(tx) == 0)


def test_unreachable_mx_is_deferred_and_kept(pair):
    tx, rx = pair
    marker = uuid.uuid4().hex
    r = send_mail(tx, "alice@example.test", ["carol@down.remote.test"],
                  make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: re.search(rf"event=deferred qid={r.qid} rcpt=carol@down.remote.test"
                                      r" attempts=2", tx.log(0))), tx.log_tail()
    assert spool_count(tx) == 1
    # No bounce yet: the lifetime is days.
    assert not maildir_find(tx, "alice", "example.test", marker)
