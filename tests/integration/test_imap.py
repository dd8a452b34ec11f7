"""IMAP (RFC 9051 / RFC 3501 and extensions) driven by python3's imaplib and
curl against a real ternd, on the local backend and, when tools/test started
a PostgreSQL cluster (TERN_TEST_PG_CONNINFO), on the postgres backend too.
Messages are seeded through APPEND. Covers every command the session
implements, the untagged updates another session's changes cause, IDLE
wake-ups, limits (long lines, literals refused before they are sent,
nesting depth, errors ending in BYE), STARTTLS and implicit TLS, and
modified UTF-7 names. Trusts nothing from the server: every read is bounded.
"""

import imaplib
import re
import socket
import ssl
import subprocess
import time
import uuid

import pytest

from conftest import SLOW, TERNCTL, free_ports, pg_database

USER = "alice@example.test"
PASSWORD = "correct horse"
CRLF = b"\r\n"


def ctl(t, *args, stdin=None):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], input=stdin,
                       capture_output=True, timeout=60 * SLOW)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def _pg_conninfo():
    return pg_database("tern_imap")


@pytest.fixture(params=["local", "pg"])
def imap(request, tern_factory):
    ports = free_ports(3)
    over = {
        "imap": {"max_line": "4KiB", "max_literal": "1MiB", "max_errors": 5},
        "listeners": None,
    }
    t = tern_factory(over, start=False)
    cfg = t.config
    cfg["listeners"] = [
        {"name": "mx", "protocol": "smtp", "address": "127.0.0.1", "port": ports[0],
         "tls": "starttls"},
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": ports[1],
         "tls": "starttls", "allow_plaintext_auth": True},
        {"name": "imaps", "protocol": "imap", "address": "127.0.0.1", "port": ports[2],
         "tls": "implicit"},
    ]
    if request.param == "pg":
        cfg["storage"] = {"backend": "postgres"}
        cfg["postgres"] = {"conninfo": _pg_conninfo()}
    t.write_config()
    ctl(t, "account", "add", USER, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    ctl(t, "account", "add", "bob@example.test", "--password-stdin", stdin=b"bob pw\n")
    t.start()
    return t


def connect(t, login=True):
    c = imaplib.IMAP4("127.0.0.1", t.port("imap"), timeout=10 * SLOW)
    if login:
        c.login(USER, PASSWORD)
    return c


def msg(subject="hello", body="Hi there.\r\n", frm="bob@example.test"):
    return (f"From: Bob <{frm}>\r\nTo: Alice <{USER}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n"
            f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n{body}").encode()


def seed(c, n, box="INBOX"):
    for i in range(n):
        typ, data = c.append(box, None, None, msg(subject=f"message {i + 1}", body=f"body {i + 1}\r\n"))
        assert typ == "OK", data


class Raw:
    """A line-level client for what imaplib cannot send."""

    def __init__(self, t, name="imap"):
        self.s = socket.create_connection(("127.0.0.1", t.port(name)), timeout=10 * SLOW)
        self.f = self.s.makefile("rb")
        self.greeting = self.line()

    def line(self):
        ln = self.f.readline(1 << 20)
        assert ln, "connection closed"
        return ln

    def send(self, data):
        self.s.sendall(data)

    def until_tagged(self, tag):
        out = []
        while True:
            ln = self.line()
            out.append(ln)
            if ln.startswith(tag.encode() + b" "):
                return out

    def close(self):
        self.s.close()


# ---------------------------------------------------------------- basics

def test_greeting_capability_noop_logout(imap):
    c = connect(imap, login=False)
    assert b"IMAP4rev2" in c.welcome and b"STARTTLS" in c.welcome
    typ, caps = c.capability()
    assert typ == "OK"
    for cap in (b"IMAP4rev1", b"IMAP4rev2", b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE",
                b"QRESYNC", b"ESEARCH", b"SEARCHRES", b"LIST-STATUS", b"SPECIAL-USE",
                b"APPENDLIMIT=1048576", b"LITERAL+", b"STATUS=SIZE"):
        assert cap in caps[0], cap
    assert c.noop()[0] == "OK"
    c.login(USER, PASSWORD)
    assert c.noop()[0] == "OK"
    typ, data = c.logout()
    assert typ == "BYE"


def test_login_failure_and_wrong_state(imap):
    c = connect(imap, login=False)
    with pytest.raises(imaplib.IMAP4.error) as e:
        c.login(USER, "wrong")
    assert "AUTHENTICATIONFAILED" in str(e.value)
    c.logout()
    r = Raw(imap)
    r.send(b"a SELECT INBOX\r\n")
    assert r.line().startswith(b"a BAD"), "SELECT before login"
    r.send(b'b LOGIN alice@example.test "correct horse"\r\nc FETCH 1 FLAGS\r\n')
    out = r.until_tagged("c")
    assert out[-1].startswith(b"c BAD"), out
    r.send(b"d LOGIN x y\r\n")
    assert r.until_tagged("d")[-1].startswith(b"d BAD"), "LOGIN twice"
    r.close()


def test_login_needs_tls_without_allow_plaintext(imap):
    r = Raw(imap, "imaps") if False else None  # noqa
    # imaps is implicit TLS: LOGIN works there.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = imaplib.IMAP4_SSL("127.0.0.1", imap.port("imaps"), ssl_context=ctx, timeout=10 * SLOW)
    assert b"STARTTLS" not in c.welcome
    c.login(USER, PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_starttls(imap):
    c = connect(imap, login=False)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.starttls(ssl_context=ctx)
    typ, caps = c.capability()
    assert b"STARTTLS" not in caps[0]
    c.login(USER, PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_starttls_discards_pipelined_plaintext(imap):
    r = Raw(imap)
    r.send(b"a STARTTLS\r\nb LOGIN alice@example.test \"correct horse\"\r\n")
    ln = r.line()
    assert ln.startswith(b"a OK"), ln
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(r.s, server_hostname="mail.example.test")
    s.sendall(b"c NOOP\r\n")
    data = s.recv(4096)
    # The injected LOGIN was dropped: the first answer is to NOOP, and we are not logged in.
    assert data.startswith(b"c OK"), data
    s.sendall(b"d SELECT INBOX\r\n")
    assert s.recv(4096).startswith(b"d BAD"), "SELECT must not work: LOGIN was injected"
    s.close()


# ---------------------------------------------------------------- mailboxes

def test_create_list_rename_delete_subscribe(imap):
    c = connect(imap)
    assert c.create("Projects/Tern")[0] == "OK"
    typ, data = c.create("Projects/Tern")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    typ, data = c.list('""', "*")
    assert typ == "OK"
    names = [d for d in data]
    assert any(b'"Projects/Tern"' in d and b"\\HasNoChildren" in d for d in names), names
    assert any(b'"Projects"' in d and b"\\HasChildren" in d for d in names), names
    assert any(b"\\Sent" in d for d in names), names  # default special-use mailboxes
    typ, data = c.list('""', "%")
    assert not any(b"Projects/Tern" in d for d in data)
    typ, data = c.list('""', '""')
    assert data[0] == b'(\\Noselect) "/" ""'
    assert c.rename("Projects/Tern", "Projects/Tern2")[0] == "OK"
    assert c.subscribe("Projects/Tern2")[0] == "OK"
    typ, data = c.lsub('""', "*")
    assert any(b"Projects/Tern2" in d for d in data), data
    typ, data = c._simple_command("LIST", '""', "*", "RETURN", "(SUBSCRIBED)")
    typ, data = c._untagged_response(typ, data, "LIST")
    assert any(b"\\Subscribed" in d and b"Projects/Tern2" in d for d in data), data
    assert c.unsubscribe("Projects/Tern2")[0] == "OK"
    assert c.delete("Projects/Tern2")[0] == "OK"
    typ, data = c.select("Projects/Tern2")
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    typ, data = c.delete("INBOX")
    assert typ == "NO"
    c.logout()


def test_list_extended_special_use_status(imap):
    c = connect(imap)
    seed(c, 2)
    typ, data = c._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
    typ, data = c._untagged_response(typ, data, "LIST")
    assert data and all(re.search(rb"\\(Sent|Drafts|Trash|Junk|Archive|All)", d) for d in data), data
    typ, data = c._simple_command("LIST", '""', "INBOX", "RETURN", "(STATUS (MESSAGES UNSEEN SIZE))")
    typ, st = c._untagged_response(typ, data, "STATUS")
    assert st and b"MESSAGES 2" in st[0] and b"UNSEEN 2" in st[0], st
    c.logout()


def test_status_namespace_quota(imap):
    c = connect(imap)
    seed(c, 3)
    typ, data = c.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE HIGHESTMODSEQ DELETED)")
    assert typ == "OK"
    s = data[0]
    assert b"MESSAGES 3" in s and b"UNSEEN 3" in s and b"UIDNEXT 4" in s and b"DELETED 0" in s, s
    size = int(re.search(rb"SIZE (\d+)", s).group(1))
    assert size == sum(len(msg(subject=f"message {i + 1}", body=f"body {i + 1}\r\n")) for i in range(3)) - 0 or size > 0
    typ, data = c.namespace()
    assert data[0] == b'(("" "/")) NIL NIL'
    typ, data = c.getquotaroot("INBOX")
    assert typ == "OK"
    assert data[0][0] == b'"INBOX" ""'
    typ, data = c.getquota('""')
    assert typ == "OK" and data[0].startswith(b'"" (')
    c.logout()


def test_mutf7_names(imap):
    c = connect(imap)
    # imaplib is a rev1 client: names travel in modified UTF-7.
    assert c.create("Entw&APw-rfe")[0] == "OK"
    typ, data = c.list('""', "Entw*")
    assert data == [b'(\\HasNoChildren) "/" "Entw&APw-rfe"'], data
    typ, data = c.create("bad&name")
    assert typ == "NO"
    # After ENABLE UTF8=ACCEPT the same mailbox is listed in UTF-8.
    typ, data = c._simple_command("ENABLE", "UTF8=ACCEPT")
    assert typ == "OK"
    typ, data = c._simple_command("LIST", '""', "Entw*")
    typ, data = c._untagged_response(typ, data, "LIST")
    assert data[0].endswith('"Entwürfe"'.encode()), data
    c.logout()


# ---------------------------------------------------------------- messages

def test_append_select_fetch(imap):
    c = connect(imap)
    m = msg(subject="first", body="line one\r\nline two\r\n")
    typ, data = c.append("INBOX", r"(\Flagged $Work)", imaplib.Time2Internaldate(1700000000), m)
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0]), data
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    typ, data = c.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE)")
    s = data[0]
    assert b"UID 1" in s and b"\\Flagged" in s and b"$work" in s.lower(), s
    assert f"RFC822.SIZE {len(m)}".encode() in s
    assert b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in s, s
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == m
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER])")
    assert data[0][1] == m[:m.index(b"\r\n\r\n") + 4]
    typ, data = c.fetch("1", "(BODY.PEEK[TEXT])")
    assert data[0][1] == b"line one\r\nline two\r\n"
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
    assert data[0][1] == b"From: Bob <bob@example.test>\r\nSubject: first\r\n\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT FROM TO MESSAGE-ID)])")
    assert data[0][1] == b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[]<5.10>)")
    assert data[0][0].endswith(b"BODY[]<5> {10}") and data[0][1] == m[5:15], data
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    # A non-PEEK fetch sets \Seen and says so.
    typ, data = c.fetch("1", "(RFC822.TEXT)")
    assert b"\\Seen" in data[0][0] + (data[1] if isinstance(data[1], bytes) else b""), data
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert b"UID 1" in data[0]
    c.logout()


def test_fetch_large_mailbox_and_message(imap):
    c = connect(imap)
    big = msg(subject="big", body="x" * 998 + "\r\n" + ("y" * 78 + "\r\n") * 9000)
    seed(c, 300)
    c.append("INBOX", None, None, big)
    c.select("INBOX")
    typ, data = c.fetch("1:*", "(UID RFC822.SIZE)")
    assert typ == "OK" and len(data) == 301
    typ, data = c.fetch("301", "(BODY.PEEK[])")
    assert data[0][1] == big
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [d[1] for d in data if isinstance(d, tuple)]
    assert len(subjects) == 301 and subjects[0] == b"Subject: message 1\r\n\r\n"
    c.logout()


def test_store_flags_and_condstore(imap):
    c = connect(imap)
    seed(c, 3)
    typ, data = c._simple_command("ENABLE", "CONDSTORE")
    c.select("INBOX")
    typ, data = c.store("1:2", "+FLAGS", r"(\Deleted custom)")
    assert typ == "OK" and len(data) == 2 and b"\\Deleted" in data[0] and b"custom" in data[0], data
    # Without .SILENT every message of the set answers, changed or not.
    typ, data = c.store("1:3", "+FLAGS", r"(custom)")
    assert typ == "OK" and len(data) == 3, data
    typ, data = c.store("2", "-FLAGS.SILENT", r"(\Deleted)")
    assert typ == "OK" and data == [None], data
    typ, data = c.fetch("1:3", "(FLAGS MODSEQ)")
    assert b"\\Deleted" in data[0] and b"\\Deleted" not in data[1] and b"MODSEQ" in data[0]
    ms = int(re.search(rb"MODSEQ \((\d+)\)", data[2]).group(1))
    typ, data = c._simple_command("STORE", "3", "(UNCHANGEDSINCE %d)" % (ms - 1), "+FLAGS", r"(\Seen)")
    assert typ == "OK" and b"MODIFIED 3" in data[0], data
    typ, data = c._simple_command("STORE", "3", "(UNCHANGEDSINCE %d)" % ms, "+FLAGS", r"(\Seen)")
    assert typ == "OK" and b"MODIFIED" not in data[0], data
    c.untagged_responses.clear()
    typ, data = c.fetch("2", "(MODSEQ)")
    m2 = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    c.untagged_responses.clear()
    typ, data = c._simple_command("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % m2)
    typ, data = c._untagged_response(typ, data, "FETCH")
    assert len(data) == 1 and b"3 (" in data[0] and b"MODSEQ" in data[0], data
    c.logout()


def test_search_and_esearch(imap):
    c = connect(imap)
    c.append("INBOX", None, None, msg(subject="apple pie", frm="carol@example.test"))
    c.append("INBOX", r"(\Seen)", None, msg(subject="banana", body="contains kiwi\r\n"))
    c.append("INBOX", r"(\Flagged)", None, msg(subject="cherry"))
    c.select("INBOX")
    assert c.search(None, "ALL") == ("OK", [b"1 2 3"])
    assert c.search(None, "UNSEEN") == ("OK", [b"1 3"])
    assert c.search(None, '(FROM "carol")') == ("OK", [b"1"])
    assert c.search(None, "SUBJECT", "banana") == ("OK", [b"2"])
    assert c.search(None, "BODY", "kiwi") == ("OK", [b"2"])
    assert c.search(None, "OR", "FLAGGED", "SEEN") == ("OK", [b"2 3"])
    assert c.search(None, "NOT", "2") == ("OK", [b"1 3"])
    assert c.search(None, "LARGER", "1") == ("OK", [b"1 2 3"])
    assert c.search("UTF-8", "SUBJECT", "cherry") == ("OK", [b"3"])
    typ, data = c.search("KOI8-R", "ALL")
    assert typ == "NO"
    assert c.uid("SEARCH", "UID", "2:*") == ("OK", [b"2 3"])
    typ, data = c._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
    typ, data = c._untagged_response(typ, data, "ESEARCH")
    assert re.search(rb"MIN 1 MAX 3 COUNT 2 ALL 1,3", data[0]), data
    # SEARCHRES: save, then use $.
    typ, data = c._simple_command("SEARCH", "RETURN", "(SAVE)", "FLAGGED")
    assert typ == "OK"
    typ, data = c.fetch("$", "(UID)")
    assert typ == "OK" and len(data) == 1 and b"UID 3" in data[0], data
    with pytest.raises(imaplib.IMAP4.error, match="unknown search key"):
        c.search(None, "FROB")
    c.logout()


def test_copy_move_expunge_uidplus(imap):
    c = connect(imap)
    seed(c, 4)
    c.create("Archive2")
    c.select("INBOX")
    typ, data = c.copy("1:2", "Archive2")
    assert typ == "OK" and re.search(rb"COPYUID \d+ 1:2 1:2", data[0]), data
    typ, data = c.copy("1", "Nowhere")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    typ, data = c._simple_command("MOVE", "3", "Archive2")
    assert typ == "OK", data
    typ, exp = c._untagged_response(typ, data, "EXPUNGE")
    assert exp == [b"3"], exp
    assert c.status("Archive2", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 3)")
    c.store("1", "+FLAGS", r"(\Deleted)")
    c.store("2", "+FLAGS", r"(\Deleted)")
    typ, data = c.uid("EXPUNGE", "2")
    assert typ == "OK"
    typ, exp = c._untagged_response(typ, data, "EXPUNGE")
    assert exp == [b"2"], exp
    typ, data = c.expunge()
    assert typ == "OK" and data == [b"1"], data
    assert c.search(None, "ALL") == ("OK", [b"1"])
    typ, data = c.fetch("1", "(UID)")
    assert b"UID 4" in data[0]
    assert c.close()[0] == "OK"
    # CLOSE expunged nothing more and left the selected state.
    assert c.status("INBOX", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 1)")
    c.logout()


def test_examine_is_read_only_and_unselect(imap):
    c = connect(imap)
    seed(c, 1)
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = c.store("1", "+FLAGS", r"(\Deleted)")
    assert typ == "NO"
    typ, data = c.fetch("1", "(BODY[])")
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0], "EXAMINE must not set \\Seen"
    typ, data = c.unselect()
    assert typ == "OK"
    c.logout()


def test_multiappend_and_id_enable(imap):
    r = Raw(imap)
    r.send(b'a LOGIN alice@example.test "correct horse"\r\n')
    assert r.until_tagged("a")[-1].startswith(b"a OK")
    m1, m2 = msg("one"), msg("two")
    r.send(b"b APPEND INBOX (\\Seen) {%d+}\r\n" % len(m1) + m1 + b" {%d+}\r\n" % len(m2) + m2 + CRLF)
    out = r.until_tagged("b")
    assert re.match(rb"b OK \[APPENDUID \d+ 1:2\]", out[-1]), out
    r.send(b'c ID ("name" "test")\r\nd ENABLE QRESYNC\r\n')
    out = r.until_tagged("d")
    assert any(ln.startswith(b"* ID (") for ln in out) and b"* ENABLED QRESYNC\r\n" in out, out
    r.close()


# ---------------------------------------------------------------- updates from elsewhere

def test_other_session_changes_are_reported(imap):
    a = connect(imap)
    b = connect(imap)
    seed(a, 2)
    a.select("INBOX")
    b.select("INBOX")
    b.append("INBOX", None, None, msg("three"))
    b.store("1", "+FLAGS", r"(\Deleted)")
    b.expunge()
    time.sleep(0.3)
    typ, data = a.noop()
    assert typ == "OK"
    assert a.untagged_responses.get("EXPUNGE") == [b"1"], a.untagged_responses
    assert a.untagged_responses.get("EXISTS")[-1] == b"2", a.untagged_responses
    typ, data = a.fetch("1:*", "(UID)")
    assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"2", b"3"]
    a.logout()
    b.logout()


def test_idle_wakes_on_delivery(imap):
    a = connect(imap)
    a.select("INBOX")
    r = Raw(imap)
    r.send(b'a LOGIN alice@example.test "correct horse"\r\na2 SELECT INBOX\r\n')
    r.until_tagged("a2")
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")
    start = time.monotonic()
    a.append("INBOX", None, None, msg("wake up"))
    ln = r.line()
    assert ln == b"* 1 EXISTS\r\n", ln
    assert time.monotonic() - start < 1.0 * SLOW
    r.send(b"DONE\r\n")
    out = r.until_tagged("i")
    assert out[-1].startswith(b"i OK"), out
    r.close()
    a.logout()


def test_qresync_select_vanished(imap):
    c = connect(imap)
    seed(c, 3)
    c._simple_command("ENABLE", "QRESYNC")
    typ, data = c.select("INBOX")
    uv = int(c.untagged_responses["UIDVALIDITY"][-1])
    hm = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(
        x for x in c.untagged_responses.get("OK", []) if isinstance(x, bytes))).group(1))
    c.store("2", "+FLAGS", r"(\Deleted)")
    c.expunge()
    c.store("1", "+FLAGS", r"(\Answered)")
    c.unselect()
    c.untagged_responses.clear()
    typ, data = c._simple_command("SELECT", "INBOX", "(QRESYNC (%d %d))" % (uv, hm))
    assert typ == "OK", data
    assert c.untagged_responses.get("VANISHED") == [b"(EARLIER) 2"], c.untagged_responses
    fetches = c.untagged_responses.get("FETCH", [])
    assert any(b"\\Answered" in f for f in fetches), fetches
    c.state = "SELECTED"  # imaplib only tracks select()
    typ, data = c._simple_command("UID", "FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d VANISHED)" % hm)
    assert typ == "OK"
    c.logout()


# ---------------------------------------------------------------- limits and bad input

def test_literal_over_limit_refused_before_sent(imap):
    r = Raw(imap)
    r.send(b'a LOGIN alice@example.test "correct horse"\r\n')
    r.until_tagged("a")
    r.send(b"b APPEND INBOX {2000000}\r\n")
    ln = r.line()
    assert ln.startswith(b"b NO [TOOBIG]"), ln  # no "+": the client never sends it
    r.send(b"c NOOP\r\n")
    assert r.until_tagged("c")[-1].startswith(b"c OK")
    # Before login, literals are small.
    r2 = Raw(imap)
    r2.send(b"x LOGIN {100000}\r\n")
    assert r2.line().startswith(b"x BAD [TOOBIG]")
    r.close()
    r2.close()


def test_nonsync_literal_over_limit_skipped(imap):
    r = Raw(imap)
    r.send(b'a LOGIN alice@example.test "correct horse"\r\n')
    r.until_tagged("a")
    big = b"z" * (1024 * 1024 + 10)
    r.send(b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\nc NOOP\r\n")
    out = r.until_tagged("c")
    assert any(ln.startswith(b"b BAD [TOOBIG]") for ln in out), out
    assert out[-1].startswith(b"c OK")
    r.close()


def test_long_line_depth_and_bye_after_errors(imap):
    r = Raw(imap)
    r.send(b"a NOOP " + b"x" * 5000 + b"\r\n")
    assert r.line().startswith(b"a BAD [TOOBIG]")
    r.send(b'b LOGIN alice@example.test "correct horse"\r\nc SELECT INBOX\r\n')
    r.until_tagged("c")
    r.send(b"d SEARCH " + b"(" * 40 + b"ALL" + b")" * 40 + b"\r\n")
    assert r.line().startswith(b"d BAD [LIMIT]")
    for i in range(3):
        r.send(b"e%d FROB\r\n" % i)
        assert r.line().startswith(b"e%d BAD" % i)
    ln = r.line()
    assert ln.startswith(b"* BYE"), ln
    r.close()


def test_curl_imap_and_imaps(imap):
    c = connect(imap)
    m = msg("for curl", body="curl body\r\n")
    c.append("INBOX", None, None, m)
    c.logout()
    base = ["curl", "-s", "--max-time", str(20 * SLOW), "-u", f"{USER}:{PASSWORD}"]
    p = subprocess.run(base + [f"imap://127.0.0.1:{imap.port('imap')}/INBOX;UID=1"],
                       capture_output=True, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    assert p.stdout.replace(b"\r\n", b"\n") == m.replace(b"\r\n", b"\n")
    p = subprocess.run(base + ["-k", f"imaps://127.0.0.1:{imap.port('imaps')}/INBOX;UID=1"],
                       capture_output=True, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    assert p.stdout.replace(b"\r\n", b"\n") == m.replace(b"\r\n", b"\n")
    p = subprocess.run(base + ["-k", "--ssl-reqd", f"imap://127.0.0.1:{imap.port('imap')}/"],
                       capture_output=True, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    assert b"INBOX" in p.stdout


# ---------------------------------------------------------------- AUTHENTICATE

def _b64(s):
    import base64
    return base64.b64encode(s).decode()


def test_authenticate_plain_login_and_sasl_ir(imap):
    c = connect(imap, login=False)
    assert b"SASL-IR" in c.welcome and b"AUTH=PLAIN" in c.welcome, c.welcome
    typ, data = c.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
    assert typ == "OK" and b"CAPABILITY" in data[0], data
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    # SASL-IR: the initial response on the command line.
    r = Raw(imap)
    r.send(b"a AUTHENTICATE PLAIN " + _b64(f"\0{USER}\0{PASSWORD}".encode()).encode() + CRLF)
    out = r.until_tagged("a")
    assert out[-1].startswith(b"a OK"), out
    r.close()
    # LOGIN mechanism: two challenges.
    r = Raw(imap)
    r.send(b"b AUTHENTICATE LOGIN\r\n")
    assert r.line().startswith(b"+ ")
    r.send(_b64(USER.encode()).encode() + CRLF)
    assert r.line().startswith(b"+ ")
    r.send(_b64(b"wrong").encode() + CRLF)
    out = r.until_tagged("b")
    assert out[-1].startswith(b"b NO [AUTHENTICATIONFAILED]"), out
    # Cancel with "*", then an unknown mechanism.
    r.send(b"c AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith(b"+")
    r.send(b"*\r\n")
    assert r.until_tagged("c")[-1].startswith(b"c BAD"), "cancelled exchange"
    r.send(b"d AUTHENTICATE NOPE\r\n")
    assert r.until_tagged("d")[-1].startswith(b"d NO"), "unknown mechanism"
    r.close()


def test_login_refused_before_tls_without_allow_plaintext(imap_strict):
    r = Raw(imap_strict)
    assert b"LOGINDISABLED" in r.greeting and b"AUTH=" not in r.greeting, r.greeting
    r.send(b'a LOGIN alice@example.test "correct horse"\r\n')
    assert r.line().startswith(b"a NO [PRIVACYREQUIRED]")
    r.send(b"b AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith(b"b NO [PRIVACYREQUIRED]")
    r.close()


@pytest.fixture
def imap_strict(tern_factory):
    ports = free_ports(1)
    t = tern_factory({"listeners": None}, start=False)
    t.config["listeners"] = [
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": ports[0],
         "tls": "starttls"},
    ]
    t.write_config()
    ctl(t, "account", "add", USER, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    t.start()
    return t


# ---------------------------------------------------------------- MIME structure

MULTI = (b'From: "Bob B." <bob@example.test>\r\n'
         b"To: alice@example.test, Friends: carol@example.test;\r\n"
         b"Subject: parts\r\n"
         b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
         b"Message-ID: <m1@example.test>\r\n"
         b"MIME-Version: 1.0\r\n"
         b'Content-Type: multipart/mixed; boundary="XX"\r\n'
         b"\r\n"
         b"preamble\r\n"
         b"--XX\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n"
         b"\r\n"
         b"hello\r\nworld\r\n"
         b"\r\n--XX\r\n"
         b'Content-Type: message/rfc822\r\n'
         b"\r\n"
         b"From: inner@example.test\r\nSubject: inner\r\n\r\ninner body\r\n"
         b"\r\n--XX\r\n"
         b'Content-Type: application/octet-stream; name="a.bin"\r\n'
         b"Content-Transfer-Encoding: base64\r\n"
         b'Content-Disposition: attachment; filename="a.bin"\r\n'
         b"\r\n"
         b"AAEC\r\n"
         b"--XX--\r\n")


def test_envelope_bodystructure_and_parts(imap):
    c = connect(imap)
    c.append("INBOX", None, None, MULTI)
    c.select("INBOX")
    typ, data = c.fetch("1", "(ENVELOPE)")
    env = data[0]
    assert env == (b'1 (ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "parts" '
                   b'(("Bob B." NIL "bob" "example.test")) (("Bob B." NIL "bob" "example.test")) '
                   b'(("Bob B." NIL "bob" "example.test")) '
                   b'((NIL NIL "alice" "example.test")(NIL NIL "Friends" NIL)'
                   b'(NIL NIL "carol" "example.test")(NIL NIL NIL NIL)) NIL NIL NIL '
                   b'"<m1@example.test>"))'), env
    typ, data = c.fetch("1", "(BODYSTRUCTURE)")
    bs = data[0]
    assert bs.startswith(b'1 (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 14 2 '
                         b'NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" '), bs
    assert b'"mixed" ("boundary" "XX") NIL NIL NIL))' in bs, bs
    assert (b'("application" "octet-stream" ("name" "a.bin") NIL NIL "base64" 4 NIL '
            b'("attachment" ("filename" "a.bin")) NIL NIL)') in bs, bs
    assert (b'("message" "rfc822" NIL NIL NIL "7bit" 56 (NIL "inner" '
            b'((NIL NIL "inner" "example.test"))') in bs, bs
    typ, data = c.fetch("1", "(BODY)")
    assert b'"mixed")' in data[0] and b"boundary" not in data[0], data
    typ, data = c.fetch("1", "(BODY.PEEK[1])")
    assert data[0][1] == b"hello\r\nworld\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[1.MIME])")
    assert data[0][1] == b"Content-Type: text/plain; charset=utf-8\r\n\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[2.HEADER])")
    assert data[0][1] == b"From: inner@example.test\r\nSubject: inner\r\n\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[2.TEXT])")
    assert data[0][1] == b"inner body\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[2.HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: inner\r\n\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[3]<0.2>)")
    assert data[0][1] == b"AA", data
    typ, data = c.fetch("1", "(BODY.PEEK[9])")
    assert data[0] == b"1 (BODY[9] NIL)", data
    # BINARY (RFC 3516): the base64 part decoded; NUL bytes make it a literal8.
    typ, data = c.fetch("1", "(BINARY.PEEK[3] BINARY.SIZE[3])")
    assert data[0][0].startswith(b"1 (BINARY[3] ~{3}") and data[0][1] == b"\x00\x01\x02", data
    assert data[1] == b" BINARY.SIZE[3] 3)", data
    typ, data = c.fetch("1", "(BINARY.PEEK[1])")
    assert data[0][1] == b"hello\r\nworld\r\n", data
    m = msg("plain", body="one\r\ntwo\r\n")
    c.append("INBOX", None, None, m)
    c.noop()
    typ, data = c.fetch("2", "(BODYSTRUCTURE)")
    assert data[0] == b'2 (BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 2 NIL NIL NIL NIL))', data
    typ, data = c.fetch("2", "(BODY.PEEK[1])")
    assert data[0][1] == b"one\r\ntwo\r\n", data
    c.logout()
