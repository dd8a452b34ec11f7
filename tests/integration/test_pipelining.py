"""PIPELINING (RFC 2920): several commands in one write, every reply sent
in order, nothing lost or merged, transactions back to back."""

from conftest import HELO, dot_stuff, make_message


def test_group_in_one_write(tern):
    c = tern.connect()
    c.ehlo()
    c.send("MAIL FROM:<alice@example.org>\r\n"
           "RCPT TO:<one@example.test>\r\n"
           "RCPT TO:<someone@elsewhere.example.org>\r\n"
           "RCPT TO:<two@example.test>\r\n"
           "DATA\r\n")
    rs = c.replies(5)
    assert [r.code for r in rs] == [250, 250, 554, 250, 354], rs
    # end of data, then the next transaction, in one write
    c.send(dot_stuff(make_message(subject="first")) + b".\r\n"
           b"MAIL FROM:<bob@example.org>\r\n"
           b"RCPT TO:<three@example.test>\r\n"
           b"DATA\r\n")
    rs = c.replies(4)
    assert [r.code for r in rs] == [250, 250, 250, 354], rs
    q1 = rs[0].qid
    c.send(dot_stuff(make_message(subject="second")) + b".\r\nQUIT\r\n")
    rs = c.replies(2)
    assert [r.code for r in rs] == [250, 221], rs
    q2 = rs[0].qid
    assert q1 and q2 and q1 != q2
    assert c.closed()
    listing = tern.spool_list()
    assert q1 in listing and q2 in listing
    line1 = [ln for ln in listing.splitlines() if q1 in ln][0]
    assert "one@example.test" in line1 and "two@example.test" in line1, line1
    assert "elsewhere" not in line1, line1
    assert tern.spool_count() == 2


def test_many_commands_one_write(tern):
    c = tern.connect()
    c.ehlo()
    n = 200
    c.send("".join("NOOP %d\r\n" % i for i in range(n)) + "HELP\r\n")
    rs = c.replies(n + 1)
    assert all(r.code == 250 for r in rs[:n]), rs
    assert rs[-1].code == 214
    assert c.quiet(0.5) == b""


def test_mixed_group_in_order(tern):
    c = tern.connect()
    c.send(f"EHLO {HELO}\r\n")
    assert c.reply().code == 250
    c.send("RSET\r\nNOOP\r\nVRFY postmaster\r\nFROB\r\nHELP\r\nMAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.test>\r\nRSET\r\nRCPT TO:<b@example.test>\r\n")
    rs = c.replies(9)
    assert [r.code for r in rs] == [250, 250, 252, 500, 214, 250, 250, 250, 503], rs


def test_pipelined_after_quit_ignored(tern):
    c = tern.connect()
    c.ehlo()
    c.send("QUIT\r\nNOOP\r\n")
    assert c.reply().code == 221
    assert c.closed()
    assert c.buf == b"", c.buf


def test_commands_split_across_writes(tern):
    c = tern.connect()
    c.ehlo()
    c.send(b"MAIL FROM:<alice@exa")
    assert c.quiet(0.3) == b""
    c.send(b"mple.org>\r\nRCPT TO:<postmaster@example.test>\r")
    assert c.reply().code == 250
    c.send(b"\nDATA\r\n")
    assert [r.code for r in c.replies(2)] == [250, 354]
    msg = dot_stuff(make_message())
    c.send(msg[:10])
    c.send(msg[10:] + b".\r")
    assert c.quiet(0.3) == b""
    c.send(b"\n")
    r = c.reply()
    assert r.code == 250 and r.qid
