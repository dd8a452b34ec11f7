"""SMTP smuggling: only <CRLF>.<CRLF> ends DATA. A bare LF or bare CR in the
data is refused after the real end (smtp.bare_lf: reject, the default) or
normalised into one message (bare_lf: normalize); either way the commands
hidden behind a fake end of data are never executed."""

import pytest

from conftest import Client

FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r"]
IDS = [e.decode().replace("\r", "CR").replace("\n", "LF") for e in FAKE_ENDS]

SMUGGLED = (b"MAIL FROM:<admin@example.test>\r\n"
            b"RCPT TO:<victim@example.test>\r\n"
            b"DATA\r\n"
            b"From: <admin@example.test>\r\nSubject: smuggled\r\n\r\nevil\r\n")


def smuggle(c, fake_end):
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"From: <alice@example.org>\r\nSubject: carrier\r\n\r\nhello" + fake_end
           + SMUGGLED + b".\r\n")
    first = c.reply()
    extra = c.quiet(1.5)          # a server fooled by the fake end answers more
    return first, extra


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=IDS)
def test_reject(tern, fake_end):
    c = tern.connect()
    first, extra = smuggle(c, fake_end)
    assert first.code // 100 == 5, first
    assert extra == b"", f"more replies than the one for the real end of data: {extra!r}"
    assert c.cmd("NOOP").code == 250
    assert tern.spool_count() == 0
    assert "victim" not in tern.spool_list()


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=IDS)
def test_normalize(tern_factory, fake_end):
    t = tern_factory({"smtp": {"bare_lf": "normalize"}})
    c = t.connect()
    first, extra = smuggle(c, fake_end)
    assert first.code == 250 and first.qid, first
    assert extra == b"", f"more replies than the one for the real end of data: {extra!r}"
    assert t.spool_count() == 1
    listing = t.spool_list()
    assert "victim" not in listing
    show = t.spool_show(first.qid)
    assert b"victim@example.test" in show and b"evil" in show   # it is all one body
    body = show.replace(b"\r\n", b"\n")
    assert b"\r" not in body.split(b"Subject: carrier", 1)[1], "a bare CR was stored"


def test_bare_lf_in_headers_rejected(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: lf\nX-Other: 1\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    assert r.code // 100 == 5, r
    assert tern.spool_count() == 0


def test_crlf_dot_crlf_split_over_packets(tern):
    """The real end of data arriving one byte per packet still ends it."""
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: split end\r\n\r\nbody")
    for b in b"\r\n.\r\n":
        c.send(bytes([b]))
    r = c.reply()
    assert r.code == 250, r


def test_lf_dot_lf_does_not_end_data(tern):
    """<LF>.<LF> alone, then silence: the server must still be in DATA."""
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: x\r\n\r\nbody\n.\n")
    assert c.quiet(1.5) == b"", "the server answered after <LF>.<LF>"
    c.send(b"\r\n.\r\n")
    r = c.reply()
    assert r.code // 100 == 5, r        # bare LF: refused (default reject)


def test_bdat_then_fake_data_end(tern):
    """After BDAT LAST, DATA-style ends and commands are commands again,
    and bytes inside a chunk never are."""
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    chunk = b"Subject: chunk\r\n\r\nx\r\n.\r\n" + SMUGGLED + b".\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    r = c.reply()
    assert r.code == 250 and r.qid, r
    assert c.quiet(1.0) == b""
    assert tern.spool_count() == 1
    assert "victim" not in tern.spool_list()


def test_reject_then_same_session_sends(tern):
    c = tern.connect()
    first, _ = smuggle(c, b"\n.\n")
    assert first.code // 100 == 5
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    r = c.data(b"Subject: clean\r\n\r\nclean\r\n")
    assert r.code == 250
    assert tern.spool_count() == 1
    with Client(tern.port()) as c2:
        assert c2.reply().code == 220
