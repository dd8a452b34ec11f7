"""POP3 (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 SASL, RFC 6856
UTF8) against a real ternd, with python3's poplib for every command, raw
sockets for bad input, curl's pop3:// and pop3s://, and fetchmail. Mailboxes
are seeded with `ternctl message append` (and over SMTP when local
delivery exists). The same suite runs against the local store and, when
tools/test started a PostgreSQL cluster, against PostgreSQL."""

import base64
import hashlib
import hmac
import os
import poplib
import re
import shutil
import socket
import ssl
import subprocess
import time
import uuid

import pytest

from conftest import IO_TIMEOUT, SLOW, TERNCTL, client_context, free_ports, pg_database

USER = "alice@example.test"
PASSWORD = "correct horse"


def ctl(t, *args, stdin=None, check=True):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], input=stdin,
                       capture_output=True, timeout=60 * SLOW)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def message(i, body=None, extra=""):
    body = body if body is not None else f"Body of message {i}.\r\nSecond line.\r\n"
    return (f"From: <bob@example.org>\r\nTo: <{USER}>\r\nSubject: message {i}\r\n"
            f"Message-ID: <{i}.{uuid.uuid4().hex}@example.org>\r\n{extra}\r\n{body}").encode()


@pytest.fixture(params=["local", "postgres"])
def backend(request):
    if request.param == "local":
        return {}
    return {"storage": {"backend": "postgres"}, "postgres": {"conninfo": pg_database("tern_pop3")}}


def make_pop3(tern_factory, backend, messages=(), extra=None, start=True):
    p110, p995 = free_ports(2)
    over = {
        "auth": {"failure_delay": "100ms", "max_delay": "300ms"},
        "auth_internal": {"scram": True},
    }
    over.update(backend)
    t = tern_factory(over, start=False)
    t.config["listeners"] = t.config["listeners"] + [
        {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1", "port": p110,
         "tls": "starttls"},
        {"name": "pop3s", "protocol": "pop3", "address": "127.0.0.1", "port": p995,
         "tls": "implicit"},
    ]
    if extra:
        from conftest import merge
        t.config = merge(t.config, extra)
    t.write_config()
    ctl(t, "account", "add", USER, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    ctl(t, "account", "add", "bob@example.test", "--password-stdin", stdin=b"bob secret\n")
    if messages:
        files = []
        for i, m in enumerate(messages):
            f = t.dir / f"seed{i}.eml"
            f.write_bytes(m)
            files.append(str(f))
        ctl(t, "message", "append", USER, "INBOX", *files)
    if start:
        t.start()
    return t


def pop_stls(t):
    p = poplib.POP3("127.0.0.1", t.port("pop3"), timeout=IO_TIMEOUT)
    p.stls(context=client_context())
    return p


def pop_ssl(t):
    return poplib.POP3_SSL("127.0.0.1", t.port("pop3s"), timeout=IO_TIMEOUT,
                           context=client_context())


def login(t, how="stls"):
    p = pop_stls(t) if how == "stls" else pop_ssl(t)
    p.user(USER)
    p.pass_(PASSWORD)
    return p


class Raw:
    """Exact bytes to a POP3 listener; implicit TLS or plain."""

    def __init__(self, port, tls=False):
        s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock = client_context().wrap_socket(s) if tls else s
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln.decode("utf-8", "replace")

    def multi(self):
        out = []
        while True:
            ln = self.line()
            if ln == ".":
                return out
            out.append(ln)

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.line()

    def closed(self, wait=5):
        self.sock.settimeout(wait)
        try:
            while True:
                c = self.sock.recv(65536)
                if not c:
                    return True
                self.buf += c
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self):
        self.sock.close()


def raw_login(t):
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    assert r.cmd(f"USER {USER}").startswith("+OK")
    assert r.cmd(f"PASS {PASSWORD}").startswith("+OK")
    return r


# ------------------------------------------------------------------ tests

def test_capa_before_and_after_tls(tern_factory, backend):
    t = make_pop3(tern_factory, backend)
    p = poplib.POP3("127.0.0.1", t.port("pop3"), timeout=IO_TIMEOUT)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps, caps
    for c in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE",
              "IMPLEMENTATION"):
        assert c in caps, (c, caps)
    # USER before TLS: refused with the AUTH response code
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user(USER)
    p.stls(context=client_context())
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps, caps
    assert {"PLAIN", "LOGIN", "SCRAM-SHA-256"} <= set(caps["SASL"]), caps
    assert caps["UTF8"] == ["USER"], caps
    p.quit()


def test_retr_list_stat_uidl_top(tern_factory, backend):
    msgs = [message(1), message(2, body=".leading dot\r\n..two dots\r\nend\r\n"),
            message(3, body="".join(f"line {k}\r\n" for k in range(50)))]
    t = make_pop3(tern_factory, backend, msgs)
    p = login(t)
    count, size = p.stat()
    assert count == 3 and size == sum(len(m) for m in msgs)
    resp, listing, _ = p.list()
    assert [ln.decode() for ln in listing] == [f"{i + 1} {len(m)}" for i, m in enumerate(msgs)]
    assert p.list(2).decode() == f"+OK 2 {len(msgs[1])}"
    for i, m in enumerate(msgs):
        resp, lines, octets = p.retr(i + 1)
        # poplib undoes the byte-stuffing: we get the message back exactly
        assert b"\r\n".join(lines) + b"\r\n" == m
        assert resp.decode().startswith(f"+OK {len(m)} octets")
    resp, uidls, _ = p.uidl()
    ids = [ln.decode().split()[1] for ln in uidls]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9A-F]{16}", x) for x in ids), ids
    assert p.uidl(3).decode().split()[2] == ids[2]
    resp, lines, _ = p.top(3, 2)
    head_end = lines.index(b"")
    assert lines[head_end + 1:] == [b"line 0", b"line 1"], lines
    resp, lines, _ = p.top(3, 0)
    assert lines[-1] == b"" and b"Subject: message 3" in lines
    resp, lines, _ = p.top(3, 4000000000)   # more lines than there are: whole body
    assert len(lines) == head_end + 1 + 50
    assert p.noop().startswith(b"+OK")
    p.quit()


def test_raw_byte_stuffing_on_the_wire(tern_factory, backend):
    m = message(1, body=".\r\n.x\r\nno dot\r\n")
    t = make_pop3(tern_factory, backend, [m])
    r = raw_login(t)
    assert r.cmd("RETR 1") == f"+OK {len(m)} octets"
    body = r.multi()
    assert body[-3:] == ["..", "..x", "no dot"], body
    r.close()


def test_dele_applies_only_at_quit(tern_factory, backend):
    t = make_pop3(tern_factory, backend, [message(i) for i in range(1, 5)])
    p = login(t)
    uid_before = [ln.split()[1] for ln in p.uidl()[1]]
    assert p.dele(2).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(2)
    with pytest.raises(poplib.error_proto):
        p.dele(2)
    assert p.stat()[0] == 3
    assert p.rset().startswith(b"+OK")
    assert p.stat()[0] == 4
    p.dele(1)
    p.dele(3)
    # a dropped connection never reaches UPDATE: nothing is deleted
    p.sock.shutdown(socket.SHUT_RDWR)
    p.close()
    time.sleep(0.3 * SLOW)
    p = login(t)
    assert p.stat()[0] == 4
    assert [ln.split()[1] for ln in p.uidl()[1]] == uid_before
    p.dele(1)
    p.dele(3)
    assert p.quit().startswith(b"+OK")
    p = login(t)
    assert p.stat()[0] == 2
    # numbering restarts at 1; UIDLs stay those of the surviving messages
    assert [ln.split()[1] for ln in p.uidl()[1]] == [uid_before[1], uid_before[3]]
    p.quit()


def test_in_use_lock(tern_factory, backend):
    t = make_pop3(tern_factory, backend, [message(1)])
    p = login(t)
    q = pop_ssl(t)
    q.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        q.pass_(PASSWORD)
    p.quit()
    q.user(USER)       # the same connection may try again once it is free
    q.pass_(PASSWORD)
    assert q.stat()[0] == 1
    q.quit()


def test_snapshot_does_not_move(tern_factory, backend):
    t = make_pop3(tern_factory, backend, [message(1), message(2)])
    p = login(t)
    before = p.uidl()[1]
    f = t.dir / "late.eml"
    f.write_bytes(message(3))
    ctl(t, "message", "append", USER, "INBOX", str(f))   # a delivery during the session
    assert p.uidl()[1] == before and p.stat()[0] == 2
    with pytest.raises(poplib.error_proto):
        p.retr(3)
    p.quit()
    p = login(t)
    assert p.stat()[0] == 3
    assert p.uidl()[1][:2] == before
    p.quit()


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
def test_sasl(tern_factory, backend, mech):
    t = make_pop3(tern_factory, backend, [message(1)])
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    if mech == "PLAIN":
        ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert r.cmd(f"AUTH PLAIN {ir}").startswith("+OK")
    elif mech == "LOGIN":
        assert r.cmd("AUTH LOGIN").startswith("+ ")
        assert r.cmd(base64.b64encode(USER.encode()).decode()).startswith("+ ")
        assert r.cmd(base64.b64encode(PASSWORD.encode()).decode()).startswith("+OK")
    else:
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={USER},r={cnonce}"
        ch = r.cmd("AUTH SCRAM-SHA-256 " + base64.b64encode(("n,," + first_bare).encode()).decode())
        assert ch.startswith("+ "), ch
        server_first = base64.b64decode(ch[2:]).decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, int(attrs["i"]))
        ckey = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        skey = hashlib.sha256(ckey).digest()
        final_bare = f"c=biws,r={attrs['r']}"
        auth_msg = f"{first_bare},{server_first},{final_bare}".encode()
        sig = hmac.new(skey, auth_msg, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(ckey, sig))
        ch = r.cmd(base64.b64encode(f"{final_bare},p={base64.b64encode(proof).decode()}"
                                    .encode()).decode())
        assert ch.startswith("+ "), ch
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        want = base64.b64encode(hmac.new(server_key, auth_msg, hashlib.sha256).digest()).decode()
        assert base64.b64decode(ch[2:]).decode() == "v=" + want
        assert r.cmd("").startswith("+OK")
    assert r.cmd("STAT").startswith("+OK 1 ")
    assert r.cmd("QUIT").startswith("+OK")


def test_sasl_failures(tern_factory, backend):
    t = make_pop3(tern_factory, backend)
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    bad = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
    t0 = time.monotonic()
    assert r.cmd(f"AUTH PLAIN {bad}").startswith("-ERR [AUTH]")
    assert time.monotonic() - t0 >= 0.09        # the limiter's delay
    assert r.cmd("AUTH PLAIN").startswith("+ ")
    assert r.cmd("*").startswith("-ERR")          # aborted
    assert r.cmd("AUTH PLAIN").startswith("+ ")
    assert r.cmd("%%%notbase64").startswith("-ERR")
    assert r.cmd("AUTH NOSUCH").startswith("-ERR")
    lines = [r.cmd("AUTH")] + r.multi()
    assert lines[0] == "+OK" and "PLAIN" in lines and "SCRAM-SHA-256" in lines, lines
    assert r.cmd(f"USER {USER}").startswith("+OK")
    assert r.cmd("PASS wrong").startswith("-ERR [AUTH]")
    assert r.cmd(f"PASS {PASSWORD}").startswith("-ERR")   # PASS must follow USER
    assert r.cmd(f"USER {USER}").startswith("+OK")
    assert r.cmd(f"PASS {PASSWORD}").startswith("+OK")


def test_plain_listener_without_stls_refuses_auth(tern_factory, backend):
    t = make_pop3(tern_factory, backend)
    r = Raw(t.port("pop3"))
    assert r.line().startswith("+OK")
    ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert r.cmd(f"AUTH PLAIN {ir}").startswith("-ERR [AUTH]")
    assert r.cmd("STLS").startswith("+OK")


def test_bad_input(tern_factory, backend):
    t = make_pop3(tern_factory, backend, [message(1)], extra={"pop3": {"max_errors": 50}})
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    assert r.cmd("STAT") == "-ERR Command not valid in this state"
    assert r.cmd("RETR 1").startswith("-ERR")
    assert r.cmd("FOO").startswith("-ERR Unknown command")
    assert r.cmd("TOOLONGVERB").startswith("-ERR")
    assert r.cmd("X" * 600).startswith("-ERR Line too long")
    assert r.cmd("USER a\0b").startswith("-ERR Invalid character")
    assert r.cmd(f"USER {USER}").startswith("+OK")
    assert r.cmd(f"PASS {PASSWORD}").startswith("+OK")
    assert r.cmd("USER x").startswith("-ERR")          # wrong state
    assert r.cmd("STLS").startswith("-ERR")
    assert r.cmd("TOP 1 -1").startswith("-ERR")
    assert r.cmd("TOP 1 99999999999").startswith("-ERR")   # past 10 digits
    assert r.cmd("TOP 1").startswith("-ERR")
    assert r.cmd("TOP 0 1").startswith("-ERR")
    assert r.cmd("RETR 2").startswith("-ERR No such message")
    assert r.cmd("RETR +1").startswith("-ERR")
    assert r.cmd("RETR 1 2").startswith("-ERR")
    assert r.cmd("LIST 4294967296").startswith("-ERR")
    assert r.cmd("DELE").startswith("-ERR")
    assert r.cmd("STAT").startswith("+OK 1 ")          # the session still works
    assert r.cmd("QUIT").startswith("+OK")


def test_too_many_errors_closes(tern_factory, backend):
    t = make_pop3(tern_factory, backend, extra={"pop3": {"max_errors": 3}})
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    r.cmd("BAD1")
    r.cmd("BAD2")
    assert r.cmd("BAD3").startswith("-ERR Too many errors")   # one reply per command
    assert r.closed()


def test_pipelining(tern_factory, backend):
    t = make_pop3(tern_factory, backend, [message(1), message(2)])
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    r.send(f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nLIST\r\nRETR 2\r\nQUIT\r\n")
    assert r.line().startswith("+OK") and r.line().startswith("+OK")
    assert r.line().startswith("+OK 2 ")
    assert r.line().startswith("+OK") and r.multi()[-1] == "Second line."
    assert r.line().startswith("+OK") and len(r.multi()) == 2
    assert r.line().startswith("+OK") and r.multi()[-1] == "Second line."
    assert r.line().startswith("+OK")
    assert r.closed()


def test_large_message_streams(tern_factory, backend):
    body = "".join(f"{k:08d} " + "x" * 90 + "\r\n" for k in range(60000))  # ~6 MB
    m = message(1, body=body)
    t = make_pop3(tern_factory, backend, [m])
    p = login(t, "ssl")
    resp, lines, octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == m
    p.quit()


def test_utf8_and_expire_login_delay(tern_factory, backend):
    t = make_pop3(tern_factory, backend, [message(1)],
                  extra={"pop3": {"expire": "30", "login_delay": "60s"}})
    p = pop_ssl(t)
    caps = p.capa()
    assert caps["EXPIRE"] == ["30"] and caps["LOGIN-DELAY"] == ["60"], caps
    assert p.utf8().startswith(b"+OK")
    p.user(USER)
    p.pass_(PASSWORD)
    p.quit()
    p = pop_ssl(t)
    p.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[LOGIN-DELAY\]"):
        p.pass_(PASSWORD)


@pytest.mark.parametrize("policy", ["trash", "keep"])
def test_delete_policy(tern_factory, backend, policy):
    t = make_pop3(tern_factory, backend, [message(1), message(2)],
                  extra={"pop3": {"delete_policy": policy}})
    p = login(t)
    p.dele(1)
    p.quit()
    p = login(t)
    assert p.stat()[0] == 1    # hidden from POP3 either way
    p.quit()
    t.stop()
    if policy == "trash":
        # the message is in Trash now: POP3 over a second account cannot
        # see it, so look through the log of the update
        assert "event=update" in t.log()


def test_curl(tern_factory, backend):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    m, m2 = message(1), message(2)
    t = make_pop3(tern_factory, backend, [m, m2])
    base = ["curl", "-sS", "--max-time", str(30 * SLOW), "-k", "-u", f"{USER}:{PASSWORD}"]
    out = subprocess.run(base + [f"pop3s://127.0.0.1:{t.port('pop3s')}/"],
                         capture_output=True, timeout=60 * SLOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == f"1 {len(m)}\r\n2 {len(m2)}\r\n"   # LIST
    out = subprocess.run(base + ["--ssl-reqd", f"pop3://127.0.0.1:{t.port('pop3')}/1"],
                         capture_output=True, timeout=60 * SLOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout == m
    out = subprocess.run(base + ["--login-options", "AUTH=PLAIN",
                                 f"pop3s://127.0.0.1:{t.port('pop3s')}/1"],
                         capture_output=True, timeout=60 * SLOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout == m


def _fetchmail(t, tmp, keep, ssl_mode, auth, password=PASSWORD):
    if shutil.which("fetchmail") is None:
        pytest.skip("fetchmail not installed (tools/setup installs it)")
    mda = tmp / "mda.sh"
    outdir = tmp / f"got-{uuid.uuid4().hex[:6]}"
    outdir.mkdir()
    mda.write_text(f"#!/bin/sh\ncat > {outdir}/$(date +%s%N).eml\n")
    mda.chmod(0o755)
    rc = tmp / "fetchmailrc"
    port = t.port("pop3s") if ssl_mode == "ssl" else t.port("pop3")
    # implicit TLS: "ssl"; STLS: a TLS sslproto without "ssl" makes fetchmail
    # insist on STLS
    tls = "ssl" if ssl_mode == "ssl" else "sslproto 'tls1.2+'"
    rc.write_text(
        f"set no syslog\n"
        f"poll 127.0.0.1 protocol pop3 port {port} auth {auth} timeout {int(20 * SLOW)}\n"
        f"  user '{USER}' password '{password}' is nobody here\n"
        f"  {'keep' if keep else 'nokeep'} fetchall {tls} no sslcertck\n"
        f"  mda '{mda}'\n")
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp), FETCHMAILHOME=str(tmp))
    p = subprocess.run(["fetchmail", "-f", str(rc), "-v", "--nosoftbounce"],
                       capture_output=True, timeout=90 * SLOW, env=env)
    # 0: mail fetched; 1: no mail
    assert p.returncode in (0, 1), (p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    return sorted(f.read_bytes() for f in outdir.iterdir()), p


@pytest.mark.parametrize("auth", ["password", "cram-md5"])
def test_fetchmail_keep_then_nokeep(tern_factory, backend, tmp_path, auth):
    """fetchmail fetches with keep (all left on the server), then without
    (all deleted at QUIT), over STLS then implicit TLS; with USER/PASS, or
    with SASL: fetchmail's only SASL mechanism for POP3 besides Kerberos is
    CRAM-MD5, which needs a backend that holds secrets (auth_file {PLAIN})."""
    msgs = [message(1), message(2), message(3)]
    extra = None
    password = PASSWORD
    if auth == "cram-md5":
        users = tmp_path / "users"
        password = "fetch-secret"
        users.write_text(f"{USER}:{{PLAIN}}{password}\n")
        extra = {"auth": {"backends": ["file"]}, "auth_file": {"path": str(users)}}
    t = make_pop3(tern_factory, backend, msgs, extra=extra)
    got, p = _fetchmail(t, tmp_path, keep=True, ssl_mode="stls", auth=auth, password=password)
    assert len(got) == 3, p.stdout[-3000:]
    assert all(any(m.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in g for g in got)
               for m in msgs)
    mech = "USER" if auth == "password" else "CRAM-MD5"
    assert re.search(rf"event=auth .*service=pop3 .*mech={mech} account={USER}", t.log())
    assert "event=tls" in t.log()
    r = raw_login(t) if auth == "password" else None
    if r is None:
        r = Raw(t.port("pop3s"), tls=True)
        assert r.line().startswith("+OK")
        assert r.cmd(f"USER {USER}").startswith("+OK")
        assert r.cmd(f"PASS {password}").startswith("+OK")
    assert r.cmd("STAT").startswith("+OK 3 ")      # keep: still there
    assert r.cmd("QUIT").startswith("+OK")
    got, p = _fetchmail(t, tmp_path, keep=False, ssl_mode="ssl", auth=auth, password=password)
    assert len(got) == 3, p.stdout[-3000:]
    r = Raw(t.port("pop3s"), tls=True)
    assert r.line().startswith("+OK")
    assert r.cmd(f"USER {USER}").startswith("+OK")
    assert r.cmd(f"PASS {password}").startswith("+OK")
    assert r.cmd("STAT") == "+OK 0 0"               # nokeep: deleted at QUIT
    r.close()


def test_apop(tern_factory, backend, tmp_path):
    users = tmp_path / "users"
    users.write_text("carol@example.test:{PLAIN}apop-secret\n"
                     "dave@example.test:{CRAM-MD5}" + "ab" * 32 + "\n")
    t = make_pop3(tern_factory, backend, start=False,
                  extra={"pop3": {"apop": True}, "auth": {"backends": ["file"]},
                         "auth_file": {"path": str(users)}})
    ctl(t, "account", "add", "carol@example.test", "--password-stdin", stdin=b"unused pw\n")
    f = t.dir / "c.eml"
    f.write_bytes(message(1))
    ctl(t, "message", "append", "carol@example.test", "INBOX", str(f))
    t.start()
    p = pop_ssl(t)
    ts = re.search(rb"<[^>]+@[^>]+>", p.getwelcome())
    assert ts, p.getwelcome()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.apop("carol@example.test", "wrong secret")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.apop("dave@example.test", "anything")     # no plaintext secret: same answer
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.apop("nobody@example.test", "apop-secret")
    assert p.apop("carol@example.test", "apop-secret").startswith(b"+OK")
    assert p.stat()[0] == 1
    p.quit()
    # never before TLS on the STLS listener; without pop3.apop no timestamp
    r = Raw(t.port("pop3"))
    assert r.line().startswith("+OK")
    assert r.cmd("APOP carol@example.test " + "0" * 32).startswith("-ERR [AUTH]")


def test_no_apop_by_default(tern_factory, backend):
    t = make_pop3(tern_factory, backend)
    r = Raw(t.port("pop3s"), tls=True)
    assert "<" not in r.line()
    assert r.cmd(f"APOP {USER} " + "0" * 32) == "-ERR APOP not available"


LOCAL_ONLY = {
    "processors": {
        "root": [{"match": "All", "mailet": "ToProcessor", "processor": "deliver"}],
        "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
        "error": [{"match": "All", "mailet": "RemoteDelivery"}],
        "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
    }
}


def test_smtp_delivery_during_session(tern_factory, backend):
    """Mail delivered over SMTP (the mailet pipeline's LocalDelivery) while
    a POP3 session is open does not change what that session sees."""
    from conftest import make_message, send_mail
    t = make_pop3(tern_factory, backend, [message(1), message(2)], extra=LOCAL_ONLY)
    p = login(t)
    before = (p.stat(), p.list()[1], p.uidl()[1])
    c = t.connect("mx")
    r = send_mail(c, "sender@example.org", [USER], make_message(subject="over smtp", to=USER))
    assert r.code == 250, r
    c.close()
    t.wait_log(rf"event=rcpt_done qid={r.qid}")
    assert (p.stat(), p.list()[1], p.uidl()[1]) == before
    with pytest.raises(poplib.error_proto):
        p.retr(3)
    p.dele(1)
    p.quit()
    p = login(t)
    assert p.stat()[0] == 2
    resp, lines, _ = p.retr(2)
    assert b"Subject: over smtp" in lines and b"Delivered-To: " + USER.encode() in lines
    assert p.uidl()[1][0].split()[1] == before[2][1].split()[1]
    p.quit()
