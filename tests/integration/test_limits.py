"""Every limit with its reply: command and text line lengths, recipients,
message size, errors per session, hops, connections (global, per IP, rate)
and timeouts."""

import socket
import time

import pytest

from conftest import SLOW, Client, make_message, send_mail


def test_command_line_limit(tern):
    c = tern.connect()
    c.ehlo()
    ok = "NOOP " + "x" * (512 - len("NOOP ") - 2)       # exactly 512 with CRLF
    assert c.cmd(ok).code == 250
    r = c.cmd("NOOP " + "x" * 600)
    assert r.code == 500 and r.enhanced == "5.5.2", r
    r = c.cmd("MAIL FROM:<" + "a" * 600 + "@example.org>")
    assert r.code == 500 and r.enhanced == "5.5.2", r
    assert c.cmd("NOOP").code == 250              # the rest of the long line was dropped


def test_very_long_command_line(tern):
    c = tern.connect()
    c.ehlo()
    c.send(b"NOOP " + b"y" * 200000 + b"\r\nNOOP\r\n")
    r = c.reply()
    assert r.code == 500 and r.enhanced == "5.5.2", r
    assert c.reply().code == 250


def test_command_line_limit_configurable(tern_factory):
    t = tern_factory({"smtp": {"max_command_line": 2048}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("NOOP " + "x" * 1500).code == 250
    assert c.cmd("NOOP " + "x" * 2100).code == 500


def data_lines(c, body):
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: long line\r\n\r\n" + body + b".\r\n")
    return c.reply()


def test_text_line_limit(tern):
    c = tern.connect()
    c.ehlo()
    r = data_lines(c, b"x" * 998 + b"\r\n")           # 1000 with CRLF: allowed
    assert r.code == 250, r
    r = data_lines(c, b"short\r\n" + b"x" * 1200 + b"\r\nafter\r\n")
    assert r.code == 500 and r.enhanced == "5.5.2", r
    assert c.cmd("NOOP").code == 250                   # still in sync after the final dot
    assert tern.spool_count() == 1


def test_text_line_limit_dot_not_missed(tern):
    """A line over the limit that ends in what looks like the end of data
    must not hide the real end of data."""
    c = tern.connect()
    c.ehlo()
    r = data_lines(c, b"y" * 5000 + b"\r\n")
    assert r.code == 500, r
    assert c.cmd("NOOP").code == 250


def test_max_recipients(tern_factory):
    t = tern_factory({"smtp": {"max_recipients": 3}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    for i in range(3):
        assert c.cmd(f"RCPT TO:<u{i}@example.test>").code == 250
    r = c.cmd("RCPT TO:<u3@example.test>")
    assert r.code == 452 and r.enhanced == "4.5.3", r
    r = c.data(make_message())
    assert r.code == 250, r
    line = [ln for ln in t.spool_list().splitlines() if r.qid in ln][0]
    assert "u2@example.test" in line and "u3@example.test" not in line, line


def test_default_max_recipients_is_100(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    c.send("".join(f"RCPT TO:<u{i}@example.test>\r\n" for i in range(101)))
    rs = c.replies(101)
    assert all(r.code == 250 for r in rs[:100]), [r for r in rs[:100] if r.code != 250]
    assert rs[100].code == 452, rs[100]


def test_message_size_after_data(tern_factory):
    t = tern_factory({"smtp": {"max_message_size": "10KiB"}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    r = c.data(make_message(body=("z" * 78 + "\r\n") * 300))
    assert r.code == 552 and r.enhanced == "5.3.4", r
    assert c.cmd("NOOP").code == 250
    r = send_mail(c, ehlo=False)                       # a small one still goes through
    assert r.code == 250
    assert t.spool_count() == 1


def test_size_parameter_too_big(tern_factory):
    t = tern_factory({"smtp": {"max_message_size": "10KiB"}})
    c = t.connect()
    c.ehlo()
    r = c.cmd("MAIL FROM:<alice@example.org> SIZE=20000")
    assert r.code == 552 and r.enhanced == "5.3.4", r
    assert c.cmd("MAIL FROM:<alice@example.org> SIZE=2000").code == 250


def test_listener_max_message_size(tern_factory):
    t = tern_factory(start=False)
    t.config["listeners"][0]["max_message_size"] = "5KiB"
    t.write_config()
    t.start()
    c = t.connect("mx")
    r = c.ehlo()
    size = [ln for ln in r.lines if ln.upper().startswith("SIZE")]
    assert size and size[0].split()[1] == "5120", r
    r = c.cmd("MAIL FROM:<alice@example.org> SIZE=8000")
    assert r.code == 552, r


def test_max_errors(tern_factory):
    t = tern_factory({"smtp": {"max_errors": 3}})
    c = t.connect()
    c.ehlo()
    codes = []
    for _ in range(6):
        try:
            r = c.cmd("FROB")
        except (EOFError, ConnectionResetError, BrokenPipeError):
            break
        codes.append(r.code)
        if r.code == 421:
            break
    assert codes[-1] == 421, codes
    assert codes[:-1] in ([500] * 3, [500] * 4), codes    # the 4th error drops it
    assert c.closed()


def test_max_hops(tern_factory):
    t = tern_factory({"smtp": {"max_hops": 5}})
    c = t.connect()
    c.ehlo()

    def with_hops(n):
        hops = [f"Received: from h{i}.example.org by h{i + 1}.example.org; "
                "Mon, 1 Jan 2024 00:00:00 +0000" for i in range(n)]
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
        return c.data(make_message(headers=hops))

    assert with_hops(4).code == 250
    r = with_hops(6)
    assert r.code == 554 and r.enhanced == "5.4.6", r
    assert t.spool_count() == 1


def test_max_hops_default_50(tern):
    c = tern.connect()
    c.ehlo()
    hops = ["Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000"] * 51
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    r = c.data(make_message(headers=hops))
    assert r.code == 554, r


def refused(c):
    """The connection got 421 4.7.0 and was closed."""
    r = c.reply()
    assert r.code == 421 and r.enhanced == "4.7.0", r
    assert c.closed()


def test_max_connections(tern_factory):
    t = tern_factory({"server": {"max_connections": 5}})
    held = [t.connect() for _ in range(5)]
    with t.client() as c:
        refused(c)
    held.pop().close()
    # the slot is freed once the server has seen the close
    deadline = time.monotonic() + 5 * SLOW
    while True:
        c = t.client()
        r = c.reply()
        c.close()
        if r.code == 220:
            break
        assert time.monotonic() < deadline, "slot never freed"
        time.sleep(0.1)
    for h in held:
        assert h.cmd("NOOP").code == 250


def test_per_ip_cap(tern_factory):
    t = tern_factory({"limits": {"max_connections_per_ip": 3}})
    held = [t.connect() for _ in range(3)]
    with t.client() as c:
        refused(c)
    # another listener, same IP: the cap is per IP, not per listener
    with t.client("submission") as c:
        refused(c)
    held[0].cmd("QUIT")
    held[0].closed()
    deadline = time.monotonic() + 5 * SLOW
    while True:
        c = t.client()
        r = c.reply()
        c.close()
        if r.code == 220:
            break
        assert time.monotonic() < deadline, "per-IP slot never freed"
        time.sleep(0.1)


def test_per_ip_rate(tern_factory):
    t = tern_factory({"limits": {"connection_rate_per_ip": 1, "connection_burst_per_ip": 3}})
    for _ in range(3):
        c = t.connect()
        c.close()
    with t.client() as c:
        refused(c)
    time.sleep(1.5)                                   # one token back
    c = t.connect()
    c.close()


def test_limits_hot_reload(tern):
    held = [tern.connect() for _ in range(2)]
    tern.reload({"limits": {"max_connections_per_ip": 2}})
    with tern.client() as c:
        refused(c)
    for h in held:                                     # open sessions are untouched
        assert h.cmd("NOOP").code == 250


def test_idle_timeout_listener(tern_factory):
    t = tern_factory(start=False)
    t.config["listeners"][0]["timeout"] = "1s"
    t.write_config()
    t.start()
    c = t.connect()
    c.ehlo()
    t0 = time.monotonic()
    r = c.reply()                                      # waits for the server
    assert r.code == 421, r
    assert c.closed()
    assert time.monotonic() - t0 < 5 * SLOW


def test_command_timeout(tern_factory):
    t = tern_factory({"smtp": {"command_timeout": "1s", "greeting_timeout": "1s"}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    t0 = time.monotonic()
    r = c.reply()
    assert r.code == 421, r
    assert c.closed()
    assert time.monotonic() - t0 < 5 * SLOW


def test_data_block_timeout(tern_factory):
    t = tern_factory({"smtp": {"data_block_timeout": "1s"}})
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: stalled\r\n\r\npartial")
    t0 = time.monotonic()
    r = c.reply()
    assert r.code == 421, r
    assert time.monotonic() - t0 < 5 * SLOW
    assert c.closed()
    assert t.spool_count() == 0


def test_activity_resets_idle_timer(tern_factory):
    t = tern_factory(start=False)
    t.config["listeners"][0]["timeout"] = "2s"
    t.write_config()
    t.start()
    c = t.connect()
    c.ehlo()
    for _ in range(4):                                 # 4 s of activity in all
        time.sleep(1)
        assert c.cmd("NOOP").code == 250


def test_half_closed_client(tern):
    """A client that closes its sending side gets its replies and a close."""
    c = tern.connect()
    c.send(b"EHLO x.test\r\nNOOP\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    rs = c.replies(2)
    assert [r.code for r in rs] == [250, 250]
    assert c.closed()


@pytest.mark.parametrize("count", [200])
def test_many_sessions(tern, count):
    clients = [tern.connect() for _ in range(count)]
    for c in clients:
        c.send(b"EHLO many.test\r\n")
    for c in clients:
        assert c.reply().code == 250
    for c in clients:
        c.send(b"QUIT\r\n")
    for c in clients:
        assert c.reply().code == 221
        c.close()


def test_connection_reset_mid_data(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: cut\r\n\r\nhalf a message")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()                                          # RST
    with Client(tern.port()) as c2:
        assert c2.reply().code == 220
        assert c2.cmd("NOOP").code == 250
    assert tern.spool_count() == 0
