"""Relay control: mail for `domains` is accepted from anyone; mail for any
other domain only from relay_networks (or, later, authenticated clients).
Never an open relay, whatever the address trick. Also the IPv6 listener."""

import socket

import pytest

from conftest import free_ports, have_ipv6, make_message, send_mail

OUTSIDE = ["someone@elsewhere.example.org",
           "@example.test:someone@elsewhere.example.org",   # source route
           "someone@[192.0.2.1]",                           # address literal
           "someone@sub.example.test",                      # not a listed domain
           "someone@example.test.elsewhere.example.org",
           "someone@elsewhere.example.org.",
           ]


def denied(r):
    return r.code // 100 == 5 and (r.enhanced or "").startswith("5.")


@pytest.mark.parametrize("rcpt", OUTSIDE)
def test_relay_denied_outside_relay_networks(tern_factory, rcpt):
    t = tern_factory({"smtp": {"relay_networks": ["10.0.0.0/8", "192.0.2.0/24"]}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    assert denied(r), r
    if rcpt == OUTSIDE[0]:
        assert r.code == 554 and r.enhanced == "5.7.1", r
    # no recipient: no transaction
    assert c.cmd("DATA").code in (503, 554)
    assert t.spool_count() == 0


def test_relay_denied_by_default(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<postmaster@example.test>").code == 250  # a local sender changes nothing
    r = c.cmd("RCPT TO:<someone@elsewhere.example.org>")
    assert r.code == 554 and r.enhanced == "5.7.1", r


def test_relay_denied_on_submission_without_auth(tern):
    """Refused at MAIL (530 5.7.0 authentication required) or at RCPT."""
    c = tern.connect("submission")
    c.ehlo()
    c.starttls()
    c.ehlo()
    r = c.cmd("MAIL FROM:<alice@example.test>")
    if r.code == 250:
        r = c.cmd("RCPT TO:<someone@elsewhere.example.org>")
    assert denied(r) and r.enhanced.startswith("5.7."), r
    assert c.cmd("DATA").code in (503, 554)
    assert tern.spool_count() == 0


def test_submission_from_relay_networks(tern_factory):
    t = tern_factory({"smtp": {"relay_networks": ["127.0.0.0/8"]}})
    c = t.connect("submission")
    c.ehlo()
    c.starttls()
    r = send_mail(c, rcpts=["someone@elsewhere.example.org"])
    assert r.code == 250, r


def test_relay_allowed_from_relay_networks(tern_factory):
    t = tern_factory({"smtp": {"relay_networks": ["127.0.0.0/8"]}})
    c = t.connect()
    r = send_mail(c, rcpts=["someone@elsewhere.example.org", "postmaster@example.test"])
    assert r.code == 250 and r.qid, r
    line = [ln for ln in t.spool_list().splitlines() if r.qid in ln][0]
    assert "someone@elsewhere.example.org" in line, line


def test_relay_networks_host_route(tern_factory):
    t = tern_factory({"smtp": {"relay_networks": ["127.0.0.1/32"]}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<someone@elsewhere.example.org>").code == 250


def test_relay_networks_reload(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<someone@elsewhere.example.org>").code == 554
    tern.reload({"smtp": {"relay_networks": ["127.0.0.0/8"]}})
    c2 = tern.connect()
    c2.ehlo()
    assert c2.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c2.cmd("RCPT TO:<someone@elsewhere.example.org>").code == 250


def test_several_local_domains(tern_factory):
    t = tern_factory({"domains": ["example.test", "example.net"]})
    c = t.connect()
    r = send_mail(c, rcpts=["a@example.test", "b@example.net"])
    assert r.code == 250


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_ipv6_listener(tern_factory):
    t = tern_factory(start=False)
    port6 = free_ports(1, socket.AF_INET6, "::1")[0]
    t.config["listeners"].append({"name": "mx6", "protocol": "smtp", "address": "::1",
                                  "port": port6})
    t.write_config()
    t.start()
    c = t.connect("mx6")
    msg = make_message(subject="over IPv6")
    r = send_mail(c, message=msg)
    assert r.code == 250 and r.qid, r
    show = t.spool_show(r.qid).decode("utf-8", "replace")
    assert "::1" in show, show


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_ipv6_relay_networks(tern_factory):
    t = tern_factory(start=False)
    port6 = free_ports(1, socket.AF_INET6, "::1")[0]
    t.config["listeners"].append({"name": "mx6", "protocol": "smtp", "address": "::1",
                                  "port": port6})
    t.config["smtp"] = {"relay_networks": ["::1/128"]}
    t.write_config()
    t.start()
    c = t.connect("mx6")
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<someone@elsewhere.example.org>").code == 250
    c4 = t.connect("mx")                   # 127.0.0.1 is not ::1
    c4.ehlo()
    assert c4.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c4.cmd("RCPT TO:<someone@elsewhere.example.org>").code == 554
