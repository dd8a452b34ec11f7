"""REQUIRETLS (RFC 8689). As a receiver: offered in EHLO only after
STARTTLS, the MAIL parameter refused with 530 5.7.10 in the clear and taken
over TLS. As a sender: a REQUIRETLS message goes only to a server with a
verified certificate that offers REQUIRETLS; the test MX's certificate is
for another name, so the message comes back to the sender as a 5.7.10
bounce and the MX never sees it. (Delivery over DANE with REQUIRETLS is in
test_dane.py.)"""

import uuid

from conftest import make_message
# The sender/receiver pair on loopback DNS of the queue tests.
from test_queue import dns, pair, maildir_find, spool_count, wait_for  # noqa: F401


def test_not_offered_and_refused_in_the_clear(tern):
    c = tern.connect()
    try:
        r = c.ehlo()
        assert "REQUIRETLS" not in r.text
        r = c.cmd("MAIL FROM:<a@example.org> REQUIRETLS")
        assert r.code == 530 and r.enhanced == "5.7.10", r
        # The session goes on: the same MAIL without it is fine.
        r = c.cmd("MAIL FROM:<a@example.org>")
        assert r.code == 250, r
    finally:
        c.close()


def test_offered_and_taken_over_tls(tern):
    c = tern.connect()
    try:
        c.ehlo()
        c.starttls()
        r = c.ehlo()
        assert "REQUIRETLS" in r.lines, r
        r = c.cmd("MAIL FROM:<a@example.org> REQUIRETLS")
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
        r = c.data(make_message())
        assert r.code == 250, r
        # Syntax: no value, not twice.
        r = c.cmd("MAIL FROM:<a@example.org> REQUIRETLS=YES")
        assert r.code == 501, r
        r = c.cmd("MAIL FROM:<a@example.org> REQUIRETLS REQUIRETLS")
        assert r.code == 555, r
    finally:
        c.close()


def test_helo_client_gets_no_requiretls(tern):
    c = tern.connect()
    try:
        c.starttls()
        assert c.cmd("HELO client.example.org").code == 250
        r = c.cmd("MAIL FROM:<a@example.org> REQUIRETLS")
        assert r.code == 555, r
    finally:
        c.close()


def test_unverified_mx_bounces_with_5_7_10(pair):
    tx, rx = pair
    marker = uuid.uuid4().hex
    c = tx.connect()
    try:
        c.ehlo()
        c.starttls()
        c.ehlo()
        r = c.cmd("MAIL FROM:<alice@example.test> REQUIRETLS")
        assert r.code == 250, r
        assert c.cmd("RCPT TO:<bob@remote.test>").code == 250
        r = c.data(make_message(subject=marker, body=f"{marker}\r\n"))
        assert r.code == 250, r
    finally:
        c.close()
    dsn = wait_for(lambda: [f for f in maildir_find(tx, "alice", "example.test", marker)
                            if b"multipart/report" in f.read_bytes()])
    assert dsn, tx.log_tail()
    body = dsn[0].read_bytes().decode()
    assert "Final-Recipient: rfc822; bob@remote.test" in body
    assert "Status: 5.7.10" in body, body
    assert "REQUIRETLS" in body and "does not verify" in body, body
    assert not maildir_find(rx, "bob", "remote.test", marker)
    assert wait_for(lambda: spool_count(tx) == 0)


def _send_requiretls(tx, rcpt, marker, params="", body=None):
    c = tx.connect()
    try:
        c.ehlo()
        c.starttls()
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<alice@example.test> REQUIRETLS{params}").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        r = c.data(make_message(subject=marker, body=body or f"{marker}\r\n"))
        assert r.code == 250, r
        return r.qid
    finally:
        c.close()


def test_every_mx_is_asked_before_the_5_7_10(pair):
    """RFC 8689 4.2.1: a host that cannot take a REQUIRETLS message is
    passed over for the next MX; the bounce comes only when every host
    refused that way (two.remote.test: two MX, neither verifiable)."""
    tx, rx = pair
    marker = uuid.uuid4().hex
    qid = _send_requiretls(tx, "bob@two.remote.test", marker)
    dsn = wait_for(lambda: [f for f in maildir_find(tx, "alice", "example.test", marker)
                            if b"multipart/report" in f.read_bytes()])
    assert dsn, tx.log_tail()
    assert "Status: 5.7.10" in dsn[0].read_bytes().decode()
    log = tx.log(0)
    assert log.count(f"event=host_failed qid={qid} domain=two.remote.test") == 2, log
    assert log.count("stage=requiretls") >= 2, log


def test_unreachable_mx_defers_instead_of_refusing(pair):
    """twodown.remote.test: the first MX cannot take the message, the
    second cannot be reached; it might have, so the message is deferred,
    not bounced."""
    tx, rx = pair
    marker = uuid.uuid4().hex
    qid = _send_requiretls(tx, "bob@twodown.remote.test", marker)
    line = wait_for(lambda: [ln for ln in tx.log(0).splitlines()
                             if f"event=deferred qid={qid} " in ln])
    assert line, tx.log_tail()
    assert "REQUIRETLS" in line[0], line
    assert not [f for f in maildir_find(tx, "alice", "example.test", marker)
                if b"multipart/report" in f.read_bytes()]


def test_bounce_of_requiretls_mail_carries_headers_only(pair):
    """RFC 8689 5: RET=FULL or not, the notice of a REQUIRETLS message
    returns its headers, never its body."""
    tx, rx = pair
    marker = uuid.uuid4().hex
    secret = "body-" + uuid.uuid4().hex
    _send_requiretls(tx, "bob@remote.test", marker, params=" RET=FULL",
                     body=f"{secret}\r\n")
    dsn = wait_for(lambda: [f for f in maildir_find(tx, "alice", "example.test", marker)
                            if b"multipart/report" in f.read_bytes()])
    assert dsn, tx.log_tail()
    text = dsn[0].read_bytes().decode()
    assert "Status: 5.7.10" in text and marker in text
    assert secret not in text, text
