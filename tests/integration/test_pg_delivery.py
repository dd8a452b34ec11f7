"""Local delivery into the PostgreSQL store, in a real ternd: one SMTP
message to three local accounts is stored as one `bodies` row with a
refcount of 3 (each copy's Return-Path and Delivered-To live in its message
row), every recipient reads back its own whole copy over POP3, and the row
goes when the last copy is deleted. Needs the cluster tools/test starts
(TERN_TEST_PG_CONNINFO); skipped without it. Trusts: psql's output for the
row counts."""

import os
import poplib
import subprocess
import time
import uuid

import pytest

from conftest import (IO_TIMEOUT, SLOW, TERNCTL, client_context, free_ports, make_message,
                      pg_database)
from conftest import send_mail as _send_mail

USERS = ["ann@example.test", "ben@example.test", "cat@example.test"]
PASSWORD = "fan out"

LOCAL_ONLY = {
    "processors": {
        "root": [{"match": "All", "mailet": "ToProcessor", "processor": "deliver"}],
        "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
        "error": [{"match": "All", "mailet": "RemoteDelivery"}],
        "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
    }
}


def psql(ci, sql):
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-d", ci, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def ctl(t, *args, stdin=None):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], input=stdin,
                       capture_output=True, timeout=60 * SLOW)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def pop_login(t, user):
    p = poplib.POP3("127.0.0.1", t.port("pop3"), timeout=IO_TIMEOUT)
    p.stls(context=client_context())
    p.user(user)
    p.pass_(PASSWORD)
    return p


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return pred()


def _blob_files(d):
    return [os.path.join(p, f) for p, _dirs, files in os.walk(d)
            if os.path.relpath(p, d).count(os.sep) == 1 for f in files]


# blob: with postgres.blob_dir the body is one file, not row data, and the
# file goes with the last copy.
@pytest.mark.parametrize("blob", [False, True], ids=["in-db", "blob-dir"])
def test_one_body_row_for_a_delivery_to_three_accounts(tern_factory, tmp_path, blob):
    ci = pg_database("tern_fan")
    over = dict(LOCAL_ONLY)
    over.update({"storage": {"backend": "postgres"}, "postgres": {"conninfo": ci}})
    blob_dir = str(tmp_path / "blobs")
    if blob:
        over["postgres"]["blob_dir"] = blob_dir
    t = tern_factory(over, start=False)
    (p110,) = free_ports(1)
    t.config["listeners"] = t.config["listeners"] + [
        {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1", "port": p110,
         "tls": "starttls"}]
    t.write_config()
    for u in USERS:
        ctl(t, "account", "add", u, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    t.start()

    marker = uuid.uuid4().hex
    body = "".join(f"line {i} of the shared body {marker}\r\n" for i in range(200))
    c = t.connect()
    try:
        r = _send_mail(c, "sender@example.org", USERS,
                       make_message(subject=f"fan {marker}", body=body))
    finally:
        c.cmd("QUIT")
    assert r.code == 250, r

    def delivered():
        n = psql(ci, f"SELECT count(*) FROM messages WHERE subject = 'fan {marker}'")
        return n == "3"
    assert wait_for(delivered, 30 * SLOW), psql(ci, "SELECT count(*) FROM messages")
    rows = psql(ci, "SELECT count(DISTINCT m.body_ref), min(b.refcount), max(b.refcount), "
                    "count(DISTINCT m.prefix) FROM messages m JOIN bodies b ON b.id = m.body_ref "
                    f"WHERE m.subject = 'fan {marker}'")
    assert rows == "1|3|3|3", rows
    assert psql(ci, "SELECT count(*) FROM bodies") == "1"
    if blob:
        assert psql(ci, "SELECT external, data IS NULL FROM bodies") == "t|t"
        files = _blob_files(blob_dir)
        assert len(files) == 1, files
        with open(files[0], "rb") as f:
            assert f"line 199 of the shared body {marker}".encode() in f.read()

    # Each recipient reads its own whole copy: its trace fields, then the
    # message as sent.
    for u in USERS:
        p = pop_login(t, u)
        try:
            _, lines, _ = p.retr(1)
            text = b"\r\n".join(lines)
            assert text.startswith(b"Return-Path: <sender@example.org>\r\nDelivered-To: "
                                   + u.encode() + b"\r\n"), text[:200]
            assert f"line 199 of the shared body {marker}".encode() in text
            for other in USERS:
                if other != u:
                    assert b"Delivered-To: " + other.encode() not in text
            num, octets = p.list()[1][0].split()  # "1 SIZE"
            assert num == b"1" and int(octets) == len(text) + 2, (octets, len(text))
        finally:
            p.quit()

    # Deleted by two: the row stays, with one reference; by the third: gone.
    for k, u in enumerate(USERS):
        p = pop_login(t, u)
        p.dele(1)
        p.quit()
        want = "" if k == 2 else str(2 - k)
        got = wait_for(lambda: psql(ci, "SELECT string_agg(refcount::text, ',') FROM bodies")
                       == want, 10 * SLOW)
        assert got, (u, psql(ci, "SELECT refcount FROM bodies"))
    if blob:
        assert wait_for(lambda: not _blob_files(blob_dir), 10 * SLOW), _blob_files(blob_dir)
