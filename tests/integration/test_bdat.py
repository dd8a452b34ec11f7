"""CHUNKING (RFC 3030): BDAT in one chunk, several chunks, BDAT 0 LAST,
pipelined chunks, octets stored exactly (no dot handling), chunk sizes
against the message size limit, and sequence errors."""

import pytest

from conftest import make_message
from helpers import contains_message


def start(c, rcpt="postmaster@example.test"):
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250


def bdat(c, data, last=False):
    c.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)
    return c.reply()


def test_single_chunk_last(tern):
    c = tern.connect()
    start(c)
    msg = make_message(subject="bdat one")
    r = bdat(c, msg, last=True)
    assert r.code == 250 and r.qid, r
    assert contains_message(tern.spool_show(r.qid), msg)
    assert c.cmd("QUIT").code == 221


def test_several_chunks_then_zero_last(tern):
    c = tern.connect()
    start(c)
    msg = make_message(subject="bdat many", body="line\r\n" * 500)
    parts = [msg[:7], msg[7:1000], msg[1000:]]
    for p in parts:
        r = bdat(c, p)
        assert r.code == 250 and r.qid is None, r
    r = bdat(c, b"", last=True)
    assert r.code == 250 and r.qid, r
    assert contains_message(tern.spool_show(r.qid), msg)


def test_chunks_pipelined(tern):
    c = tern.connect()
    c.ehlo()
    msg = make_message(subject="bdat pipelined")
    a, b = msg[:50], msg[50:]
    c.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<postmaster@example.test>\r\n"
           + b"BDAT %d\r\n" % len(a) + a + b"BDAT %d LAST\r\n" % len(b) + b
           + b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<postmaster@example.test>\r\n"
           + b"BDAT %d LAST\r\n" % len(msg) + msg + b"QUIT\r\n")
    rs = c.replies(8)
    assert [r.code for r in rs] == [250, 250, 250, 250, 250, 250, 250, 221], rs
    assert rs[3].qid and rs[6].qid and rs[3].qid != rs[6].qid
    assert tern.spool_count() == 2


def test_octets_stored_exactly(tern):
    """No dot-stuffing in BDAT: CRLF.CRLF and leading dots are content;
    8-bit octets pass through."""
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org> BODY=8BITMIME").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    octets = bytes(b for b in range(1, 256) if b not in (0x0a, 0x0d))
    body = (b"..two dots stay two\r\n.\r\nstill the same message\r\n"
            + octets[:120] + b"\r\n" + octets[120:] + b"\r\n")
    msg = make_message(subject="binary", body=body)
    r = bdat(c, msg, last=True)
    assert r.code == 250, r
    assert c.cmd("NOOP").code == 250     # nothing after the chunk was taken as a command
    show = tern.spool_show(r.qid)
    assert contains_message(show, msg), show
    assert tern.spool_count() == 1


def test_crlf_split_across_chunks(tern):
    c = tern.connect()
    start(c)
    msg = make_message(subject="split", body="a\r\nb\r\n")
    i = msg.index(b"\r\nb") + 1          # chunk 1 ends in CR, chunk 2 starts with LF
    assert bdat(c, msg[:i]).code == 250
    r = bdat(c, msg[i:], last=True)
    assert r.code == 250 and r.qid, r
    assert contains_message(tern.spool_show(r.qid), msg)


def test_chunk_data_in_pieces(tern):
    c = tern.connect()
    start(c)
    msg = make_message(subject="pieces", body=("z" * 70 + "\r\n") * 80)
    c.send(b"BDAT %d LAST\r\n" % len(msg))
    for i in range(0, len(msg), 997):
        c.send(msg[i:i + 997])
    r = c.reply()
    assert r.code == 250 and r.qid, r
    assert contains_message(tern.spool_show(r.qid), msg)


def test_bdat_then_data_refused(tern):
    c = tern.connect()
    start(c)
    assert bdat(c, b"Subject: x\r\n").code == 250
    r = c.cmd("DATA")
    assert r.code == 503, r


@pytest.mark.parametrize("line", ["BDAT", "BDAT x", "BDAT -1", "BDAT 10 FIRST"])
def test_bdat_bad_argument(tern, line):
    # Without a valid size the end of the chunk is unknown: whatever the
    # client sends next could be chunk data, so it must never be read as
    # commands. The server answers 501 and closes.
    c = tern.connect()
    start(c)
    r = c.cmd(line)
    assert r.code == 501, (line, r)
    with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
        c.cmd("NOOP")
    assert tern.spool_count() == 0


def test_bdat_too_large(tern_factory):
    t = tern_factory({"smtp": {"max_message_size": "10KiB"}})
    c = t.connect()
    start(c)
    big = (b"x" * 98 + b"\r\n") * 200
    r = bdat(c, big, last=True)
    assert r.code == 552 and r.enhanced == "5.3.4", r
    assert c.cmd("NOOP").code == 250     # the chunk was consumed, not read as commands
    assert t.spool_count() == 0


def test_bdat_too_large_over_chunks(tern_factory):
    t = tern_factory({"smtp": {"max_message_size": "10KiB"}})
    c = t.connect()
    start(c)
    # 12 KB in three chunks: the server may refuse the chunk that crosses
    # the limit or wait for LAST; after a 5xx the client sends no more BDAT
    # (RFC 3030 section 2).
    r = None
    for _ in range(3):
        r = bdat(c, (b"y" * 98 + b"\r\n") * 40)
        if r.code != 250:
            break
    if r.code == 250:
        r = bdat(c, b"", last=True)
    assert r.code == 552 and r.enhanced == "5.3.4", r
    assert c.cmd("RSET").code == 250
    assert c.cmd("NOOP").code == 250
    assert t.spool_count() == 0


@pytest.mark.parametrize("size", [1 << 20, 3 << 20])
def test_bdat_large(tern, size):
    c = tern.connect()
    start(c)
    msg = make_message(subject="large", body=(b"0123456789abcdef" * 4 + b"\r\n") * (size // 66))
    r = bdat(c, msg, last=True)
    assert r.code == 250 and r.qid, r
    assert contains_message(tern.spool_show(r.qid), msg)
