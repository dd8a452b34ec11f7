"""The SMTP session on a plain connection: banner, EHLO, the simple
commands, sequence errors, a whole transaction stored in the spool with our
Received header, parameters (SIZE, BODY, SMTPUTF8, DSN), dot-unstuffing."""

import re

import pytest

from conftest import HELO, HOSTNAME, free_ports, make_message, send_mail
from helpers import contains_message, index_of, received_headers

EXTENSIONS = {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
              "CHUNKING", "DSN"}


def keywords(reply):
    return {ln.split()[0].upper() for ln in reply.lines[1:] if ln.strip()}


def test_banner(tern):
    c = tern.connect()
    assert c.banner.code == 220
    assert c.banner.lines[0].split()[0] == HOSTNAME, c.banner
    assert "ESMTP" in c.banner.text
    assert c.cmd("QUIT").code == 221
    assert c.closed()


def test_log_lines_are_key_value(tern):
    tern.wait_log(r"\bevent=ready\b")
    log = tern.log()
    for port_name in ("mx", "submission", "submissions"):
        rx = (rf"event=listening\b.*\blistener={port_name}\b.*\baddress=127\.0\.0\.1\b"
              rf".*\bport={tern.port(port_name)}\b")
        assert re.search(rx, log), f"no listening line for {port_name}:\n{log}"
    tern.wait_log(r"\bevent=ready\b")
    for line in log.splitlines():
        assert line.startswith("ts="), line
        assert re.search(r"\blevel=(debug|info|warn|error)\b", line), line


def test_session_log_carries_uuid(tern):
    c = tern.connect()
    send_mail(c)
    c.cmd("QUIT")
    c.closed()
    uuid = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
    counts = {}
    for line in tern.log().splitlines():
        for u in set(uuid.findall(line)):
            counts[u] = counts.get(u, 0) + 1
    assert counts and max(counts.values()) >= 2, \
        "no session UUID shared by several log lines:\n" + tern.log()


def test_ehlo_extensions(tern):
    c = tern.connect()
    r = c.ehlo()
    assert r.lines[0].split()[0] == HOSTNAME
    kw = keywords(r)
    assert EXTENSIONS <= kw, f"missing {EXTENSIONS - kw}"
    assert "STARTTLS" in kw   # mx listener has tls: starttls
    size = [ln for ln in r.lines[1:] if ln.upper().startswith("SIZE")]
    assert size and size[0].split()[1:] == [str(50 * 1024 * 1024)], size


def test_no_starttls_on_plain_listener(tern_factory):
    t = tern_factory(start=False)
    t.config["listeners"].append({"name": "plain", "protocol": "smtp",
                                  "address": "127.0.0.1", "port": free_ports(1)[0]})
    t.write_config()
    t.start()
    c = t.connect("plain")
    kw = keywords(c.ehlo())
    assert "STARTTLS" not in kw
    r = c.cmd("STARTTLS")
    assert r.code // 100 == 5, r


def test_size_follows_config(tern_factory):
    t = tern_factory({"smtp": {"max_message_size": "10KiB"}})
    r = t.connect().ehlo()
    size = [ln for ln in r.lines[1:] if ln.upper().startswith("SIZE")]
    assert size and size[0].split()[1] == "10240", size


def test_helo(tern):
    c = tern.connect()
    r = c.cmd(f"HELO {HELO}")
    assert r.code == 250 and len(r.lines) == 1, r
    r = send_mail(c, ehlo=False)
    assert r.code == 250 and r.qid, r
    hdr = received_headers(tern.spool_show(r.qid))[0]
    assert re.search(r"\bwith SMTP\b", hdr), hdr


def test_ehlo_without_domain(tern):
    c = tern.connect()
    assert c.cmd("EHLO").code == 501


def test_simple_commands(tern):
    c = tern.connect()
    c.ehlo()
    r = c.cmd("NOOP")
    assert r.code == 250 and r.enhanced, r
    assert c.cmd("RSET").code == 250
    r = c.cmd("VRFY postmaster@example.test")
    assert r.code == 252, r
    r = c.cmd("HELP")
    assert r.code == 214, r
    r = c.cmd("QUIT")
    assert r.code == 221 and r.enhanced == "2.0.0", r
    assert c.closed()


def test_commands_case_insensitive(tern):
    c = tern.connect()
    assert c.cmd(f"ehlo {HELO}").code == 250
    assert c.cmd("mail from:<alice@example.org>").code == 250
    assert c.cmd("Rcpt To:<postmaster@example.test>").code == 250
    assert c.cmd("rset").code == 250


def test_unknown_command(tern):
    c = tern.connect()
    c.ehlo()
    r = c.cmd("FROB nicate")
    assert r.code == 500 and r.enhanced == "5.5.1", r
    assert c.cmd("NOOP").code == 250


@pytest.mark.parametrize("script", [
    ["RCPT TO:<postmaster@example.test>"],
    ["DATA"],
    ["MAIL FROM:<a@example.org>", "DATA"],
    ["MAIL FROM:<a@example.org>", "MAIL FROM:<b@example.org>"],
    ["BDAT 10 LAST\r\n01234567"],      # cmd() adds CRLF: 10 octets of chunk
], ids=["rcpt-before-mail", "data-before-mail", "data-before-rcpt", "nested-mail",
        "bdat-before-mail"])
def test_bad_sequence(tern, script):
    c = tern.connect()
    c.ehlo()
    for line in script[:-1]:
        assert c.cmd(line).code == 250
    r = c.cmd(script[-1])
    if script[-1] == "DATA" and len(script) == 2:
        # RFC 5321 3.3: with no valid recipient, 503 or 554 "no valid recipients"
        assert r.code in (503, 554) and r.enhanced == "5.5.1", r
    else:
        assert r.code == 503 and r.enhanced == "5.5.1", r
    assert c.cmd("NOOP").code == 250   # the session goes on


def test_send_and_spool(tern):
    c = tern.connect()
    msg = make_message(subject="spooled", headers=["Received: from upstream.example.org "
                                                    "by relay.example.org; Mon, 1 Jan 2024"])
    r = send_mail(c, rcpts=["postmaster@example.test", "bob@example.test"], message=msg)
    assert r.code == 250 and r.enhanced == "2.0.0", r
    qid = r.qid
    assert qid, f"no queue id in {r}"
    assert c.cmd("QUIT").code == 221
    listing = tern.spool_list()
    assert qid in listing
    line = [ln for ln in listing.splitlines() if qid in ln][0]
    assert "alice@example.org" in line and "postmaster@example.test" in line, line
    assert tern.spool_count() == 1
    show = tern.spool_show(qid)
    assert contains_message(show, msg), show
    hdrs = received_headers(show)
    assert len(hdrs) == 2, hdrs
    ours = hdrs[0]
    # ours is first: before the upstream Received and every other header
    assert "upstream.example.org" not in ours
    assert index_of(show, b"Received: from upstream") > index_of(show, ours[:30].encode())
    assert re.search(rf"\bfrom {HELO}\b", ours), ours
    assert "127.0.0.1" in ours, ours
    assert re.search(rf"\bby {re.escape(HOSTNAME)}\b", ours), ours
    assert re.search(r"\bwith ESMTP\b", ours), ours
    # the id in our trace header is the one the client was given
    assert re.search(rf"\bid {qid}\b", ours), ours
    assert "TLS" not in ours, ours


def test_queue_ids_unique(tern):
    c = tern.connect()
    qids = [send_mail(c, ehlo=(i == 0)).qid for i in range(5)]
    assert None not in qids and len(set(qids)) == 5, qids
    assert tern.spool_count() == 5


def test_rset_aborts_transaction(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("RSET").code == 250
    assert c.cmd("DATA").code == 503
    r = send_mail(c, ehlo=False)
    assert r.code == 250
    show = tern.spool_show(r.qid).decode("utf-8", "replace")
    assert "a@example.org" not in show


def test_null_sender(tern):
    c = tern.connect()
    r = send_mail(c, mail_from="")
    assert r.code == 250 and r.qid, r
    assert r.qid in tern.spool_list()


def test_postmaster_without_domain(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    r = c.cmd("RCPT TO:<Postmaster>")
    assert r.code == 250, r


def test_local_domain_case_insensitive(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert c.cmd("RCPT TO:<Bob@EXAMPLE.Test>").code == 250


def test_unknown_mail_parameter(tern):
    c = tern.connect()
    c.ehlo()
    r = c.cmd("MAIL FROM:<a@example.org> FROBNICATE=yes")
    assert r.code == 555, r


@pytest.mark.parametrize("line", ["MAIL FROM:a@example.org", "MAIL FROM:<a@example.org",
                                  "MAIL TO:<a@example.org>", "MAIL FROM:<a b@example.org>"])
def test_mail_syntax_errors(tern, line):
    c = tern.connect()
    c.ehlo()
    r = c.cmd(line)
    assert r.code in (501, 553, 555), r
    assert c.cmd("NOOP").code == 250


def test_smtputf8(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<用户@example.org> SMTPUTF8 BODY=8BITMIME").code == 250
    assert c.cmd("RCPT TO:<δοκιμή@example.test>").code == 250
    msg = make_message(subject="UTF-8 ✓", body="Grüße, 世界\r\n",
                       sender="用户@example.org", to="δοκιμή@example.test")
    r = c.data(msg)
    assert r.code == 250 and r.qid, r
    show = tern.spool_show(r.qid)
    assert contains_message(show, msg)
    assert "δοκιμή@example.test" in show.decode("utf-8", "replace")
    ours = received_headers(show)[0]
    assert re.search(r"\bwith UTF8SMTP\b", ours), ours      # RFC 6531 section 4.3


def test_utf8_address_needs_smtputf8(tern):
    c = tern.connect()
    c.ehlo()
    r = c.cmd("MAIL FROM:<用户@example.org>")
    assert r.code // 100 == 5, r


def test_8bitmime(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    msg = make_message(body=bytes(range(0x80, 0x100)) + b"\r\n")
    r = c.data(msg)
    assert r.code == 250
    assert contains_message(tern.spool_show(r.qid), msg)


def test_size_parameter_accepted(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org> SIZE=1000").code == 250


def test_dsn_parameters(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ314159").code == 250
    r = c.cmd("RCPT TO:<postmaster@example.test> NOTIFY=SUCCESS,FAILURE "
              "ORCPT=rfc822;postmaster@example.test")
    assert r.code == 250, r
    r = c.cmd("RCPT TO:<bob@example.test> NOTIFY=NEVER")
    assert r.code == 250, r
    r = c.data(make_message())
    assert r.code == 250
    show = tern.spool_show(r.qid).decode("utf-8", "replace")
    assert "QQ314159" in show, "ENVID not stored with the envelope:\n" + show


def test_dsn_bad_notify(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    r = c.cmd("RCPT TO:<postmaster@example.test> NOTIFY=NEVER,SUCCESS")
    assert r.code == 501, r


def test_dot_unstuffing(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: dots\r\n\r\n..one\r\n...two\r\n.\r\n")
    r = c.reply()
    assert r.code == 250
    show = tern.spool_show(r.qid)
    assert contains_message(show, b"Subject: dots\r\n\r\n.one\r\n..two\r\n"), show


def test_empty_line_and_dot_only(tern):
    c = tern.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b".\r\n")   # an empty message
    r = c.reply()
    assert r.code // 100 in (2, 5), r    # either is RFC-correct; the session survives
    assert c.cmd("NOOP").code == 250


def test_large_message_spills_to_disk(tern_factory):
    t = tern_factory({"smtp": {"memory_threshold": "64KiB"}})
    c = t.connect()
    body = b"".join(b"%07d " % i + b"x" * 70 + b"\r\n" for i in range(40000))  # ~3 MiB
    msg = make_message(subject="big", body=body)
    r = send_mail(c, message=msg)
    assert r.code == 250, r
    assert contains_message(t.spool_show(r.qid), msg)


def test_slow_client_one_byte_at_a_time(tern):
    c = tern.connect()
    c.ehlo()
    msg = make_message(subject="slow")
    script = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\n"
    for b in script:        # one segment per byte (TCP_NODELAY)
        c.send(bytes([b]))
    rs = c.replies(3)
    assert [r.code for r in rs] == [250, 250, 354], rs
    for b in msg + b".\r\n":
        c.send(bytes([b]))
    r = c.reply()
    assert r.code == 250 and r.qid
    assert contains_message(t_show := tern.spool_show(r.qid), msg), t_show
