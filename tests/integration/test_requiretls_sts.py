"""REQUIRETLS (RFC 8689) and TLS-Required: No meeting MTA-STS, on the
MTA-STS test setup (test_mta_sts.py: a test CA, policies served over
HTTPS, a receiver whose certificate for mx.good.sts.test and
mx.testgood.sts.test verifies under that CA). REQUIRETLS takes a PKIX
certificate only for an MX name an enforce-mode policy vouches for;
TLS-Required: No lets a message past an enforce-mode failure."""

import re
import uuid

from conftest import make_message
from test_mta_sts import ca, dns, pair, web, delivered_line  # noqa: F401
from test_queue import maildir_find, wait_for


def send_requiretls(tx, rcpt, marker):
    c = tx.connect()
    try:
        c.ehlo()
        c.starttls()
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@example.test> REQUIRETLS").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        r = c.data(make_message(subject=marker, body=f"{marker}\r\n"))
        assert r.code == 250, r
        return r.qid
    finally:
        c.close()


def test_requiretls_to_an_enforced_verified_mx_is_delivered(pair):
    tx, rx = pair
    marker = uuid.uuid4().hex
    qid = send_requiretls(tx, "bob@good.sts.test", marker)
    assert wait_for(lambda: maildir_find(rx, "bob", "good.sts.test", marker)), tx.log_tail()
    line = delivered_line(tx, qid)
    assert line and "TLSv1.2 verified" in line.group(0), line


def test_requiretls_to_a_testing_mode_mx_bounces(pair):
    """The certificate verifies, but a testing-mode policy does not vouch
    for the MX name (and the MX answer is not DNSSEC-secure): 5.7.10."""
    tx, rx = pair
    marker = uuid.uuid4().hex
    qid = send_requiretls(tx, "bob@testgood.sts.test", marker)
    # (This pair's sender has no mailbox for the bounce: the log says it.)
    line = wait_for(lambda: re.search(rf"event=failed qid={qid} rcpt=bob@testgood.sts.test .*",
                                      tx.log(0)))
    assert line, tx.log_tail()
    assert "status=5.7.10" in line.group(0) and "not found through DNSSEC" in line.group(0)
    assert "event=bounce qid=" in tx.log(0)
    assert not maildir_find(rx, "bob", "testgood.sts.test", marker)


def test_tls_required_no_passes_an_enforce_failure(pair):
    """selfsigned.sts.test is deferred under its enforce policy
    (test_mta_sts.py); with TLS-Required: No it goes, unverified."""
    tx, rx = pair
    marker = uuid.uuid4().hex
    c = tx.connect()
    try:
        from conftest import send_mail
        r = send_mail(c, "alice@example.test", ["bob@selfsigned.sts.test"],
                      make_message(subject=marker, headers=["TLS-Required: No"]))
    finally:
        c.close()
    assert r.code == 250, r
    assert wait_for(lambda: maildir_find(rx, "bob", "selfsigned.sts.test", marker)), tx.log_tail()
    line = wait_for(lambda: re.search(rf"event=delivered qid={r.qid} .*", tx.log(0)))
    assert line and "unverified" in line.group(0), line
