"""ternd against Dovecot (Debian's dovecot-imapd, a private instance as in
tools/bench/imap): the well-formed messages of ../shared/corpus/mime (rfc/
and legacy/) are appended to both, in the same order, and each message's
BODYSTRUCTURE and ENVELOPE answer, and the answers to a set of SEARCH
commands, must be the same bytes once a string's form is set aside (Dovecot
writes long strings as literals where Tern quotes them: both are the same
IMAP string, so literals are turned into quoted strings on both sides
before comparing). Skipped when Dovecot is not installed,
when not root (Dovecot's private instance runs its mail processes as
nobody), or when the corpus is not there. Messages where Dovecot is wrong
are listed in DOVECOT_WRONG with the reason and left out.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import SLOW, free_ports
from test_imap import PASSWORD, USER, ctl

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("TERN_CORPUS", ROOT.parent / "shared" / "corpus")) / "mime"
DOVECOT = Path("/usr/sbin/dovecot")

# name -> why Dovecot's answer is the wrong one (left out)
DOVECOT_WRONG = {
}

# name -> where the two differ on purpose; compared ignoring ASCII case.
CASE_ONLY = {
    name: "Tern writes MIME type, subtype, encoding and parameter names in lower case "
          "(lib/mime.h); Dovecot keeps them as written. Both are right: they are "
          "case-insensitive (RFC 2045)"
    for name in ("rfc-000", "legacy-031", "legacy-036", "legacy-041", "legacy-045")
}

# name -> a deliberate difference in BODY/BODYSTRUCTURE; not compared.
STRUCTURE_DIFFERS = {
    "rfc-001": "a Content-Type missing the ';' before server=: Tern keeps the parameter "
               "(lib/mime.h tolerates it), Dovecot drops it",
    "legacy-049": "the message ends in a lone CR after its last CRLF: Tern counts it in "
                  "the body's octets, Dovecot does not",
}

# SEARCH -> why the answers differ; not compared.
SEARCH_DIFFERS = {
    "SENTBEFORE 1-Jan-2005": "a message without a Date: Tern takes its internal date (as "
                             "RFC 5256 does for SORT), Dovecot counts it as before any date; "
                             "rfc-002 (Date with a weekday that does not match) differs too",
    "SENTSINCE 1-Jan-2005": "as SENTBEFORE",
}

DOVECOT_CONF = """base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
passdb {{
  driver = static
  args = password=pw
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 0
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

SEARCHES = [
    "ALL", "SUBJECT test", "FROM example", "TO example", "CC a", "BODY the", "TEXT mime",
    "HEADER Content-Type multipart", "HEADER Content-Type text/plain", "LARGER 4000",
    "SMALLER 1000", "SENTBEFORE 1-Jan-2005", "SENTSINCE 1-Jan-2005", "NOT HEADER Date \"\"",
    "OR SUBJECT re FROM john", "HEADER Message-ID @", "BODY \"=?\"", "SUBJECT \"\"",
]

# SORT and THREAD (RFC 5256) over the corpus, leaving out the messages whose
# Subject, From, To or Cc hold raw 8-bit bytes (not UTF-8, no encoded word):
# Tern reads such bytes as Latin-1 (lib/rfc2047.h), so legacy-010's
# "Fr\xf6sche" is the same base subject as legacy-002's encoded one; Dovecot
# keeps them apart. Both are guesses: RFC 5256 leaves unlabelled 8-bit text
# undefined.
ORDERS = [
    "SORT (ARRIVAL) UTF-8 ALL", "SORT (SUBJECT) UTF-8 ALL", "SORT (DATE) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL", "SORT (FROM) UTF-8 ALL", "SORT (TO) UTF-8 ALL",
    "SORT (CC) UTF-8 ALL", "SORT (SIZE) UTF-8 ALL", "SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (DISPLAYTO) UTF-8 ALL", "SORT (SUBJECT REVERSE SIZE) UTF-8 ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
]


def corpus():
    out = []
    for sub in ("rfc", "legacy"):
        d = CORPUS / sub
        if d.is_dir():
            for p in sorted(d.glob("*.eml")):
                name = f"{sub}-{p.stem}"
                if name not in DOVECOT_WRONG:
                    out.append((name, p.read_bytes()))
    return out


class Client:
    """A line client that keeps literals inside the response line."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20 * SLOW)
        self.f = self.s.makefile("rb")
        self.f.readline()
        self.n = 0

    def response(self):
        line = b""
        while True:
            ln = self.f.readline(1 << 22)
            assert ln, "connection closed"
            line += ln
            m = re.search(rb"\{(\d+)\+?\}\r\n$", ln)
            if not m:
                return line
            line += self.f.read(int(m.group(1)))

    def cmd(self, text, literal=None):
        self.n += 1
        tag = f"t{self.n}"
        if literal is None:
            self.s.sendall(f"{tag} {text}\r\n".encode())
        else:
            self.s.sendall(f"{tag} {text} {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        out = []
        while True:
            r = self.response()
            if r.startswith(tag.encode() + b" "):
                assert r.startswith(tag.encode() + b" OK"), (text, r)
                return out
            out.append(r)


@pytest.fixture
def dovecot_port():
    if not (DOVECOT.exists() and Path("/usr/lib/dovecot/imap").exists()):
        pytest.skip("Dovecot (dovecot-imapd) is not installed")
    if os.geteuid() != 0:
        pytest.skip("the private Dovecot needs root (its mail processes run as nobody)")
    d = Path(tempfile.mkdtemp(prefix="tern-dovecot-"))
    os.chmod(d, 0o755)
    for sub in ("run", "state", "home"):
        (d / sub).mkdir()
    subprocess.run(["chown", "nobody:nogroup", str(d / "home")], check=True)
    port = free_ports(1)[0]
    conf = d / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(d=d, port=port))
    subprocess.run([str(DOVECOT), "-c", str(conf)], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 20 * SLOW
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "dovecot did not listen"
                time.sleep(0.1)
        yield port
    finally:
        subprocess.run([str(DOVECOT), "-c", str(conf), "stop"], capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while (d / "run" / "master.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ternd(tern_factory):
    port = free_ports(1)[0]
    t = tern_factory({"listeners": None, "imap": {"max_errors": 1000}}, start=False)
    t.config["listeners"] = [
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": port,
         "tls": "none", "allow_plaintext_auth": True},
    ]
    t.write_config()
    ctl(t, "account", "add", USER, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    t.start()
    return t


def unliteral(lines):
    """Literals as quoted strings, so that both servers' strings compare by value."""
    out = []
    for ln in lines:
        out.append(re.sub(rb"\{(\d+)\}\r\n", lambda m: b"\x00LIT" + m.group(1) + b"\x00", ln))
        # cut each marker and the count of bytes it announces into a quoted string
        b = out[-1]
        res = b""
        while True:
            i = b.find(b"\x00LIT")
            if i < 0:
                res += b
                break
            j = b.index(b"\x00", i + 4)
            n = int(b[i + 4:j])
            v = b[j + 1:j + 1 + n]
            res += b[:i] + b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            b = b[j + 1 + n:]
        out[-1] = res
    return out


def raw_8bit_addressing(data):
    head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for m in re.finditer(rb"^(subject|from|to|cc):(.*(?:\r?\n[ \t].*)*)", head, re.I | re.M):
        try:
            m.group(2).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def crlf(data):
    return re.sub(rb"\r?\n", b"\r\n", data)


def test_same_answers_as_dovecot(ternd, dovecot_port):
    msgs = corpus()
    if not msgs:
        pytest.skip(f"no corpus at {CORPUS}")
    tc = Client(ternd.port("imap"))
    tc.cmd(f'LOGIN "{USER}" "{PASSWORD}"')
    dc = Client(dovecot_port)
    dc.cmd('LOGIN "cmp@example.test" "pw"')
    for name, data in msgs:
        for c in (tc, dc):
            c.cmd('APPEND INBOX () "01-Jan-2024 10:00:00 +0000"', crlf(data))
    for c in (tc, dc):
        c.cmd("SELECT INBOX")
    diffs = []
    for i, (name, _) in enumerate(msgs, 1):
        for item in ("BODYSTRUCTURE", "ENVELOPE", "BODY"):
            if item != "ENVELOPE" and name in STRUCTURE_DIFFERS:
                continue
            t = unliteral(tc.cmd(f"FETCH {i} ({item})"))
            d = unliteral(dc.cmd(f"FETCH {i} ({item})"))
            if name in CASE_ONLY:
                t, d = [x.lower() for x in t], [x.lower() for x in d]
            if t != d:
                diffs.append(f"{name} {item}:\n  tern:    {t!r}\n  dovecot: {d!r}")
    raw8 = [str(i) for i, (_, data) in enumerate(msgs, 1) if raw_8bit_addressing(data)]
    keys = " ".join(f"NOT {n}" for n in raw8) or "ALL"
    for q in ORDERS:
        q = q.replace(" ALL", " " + keys)
        t = tc.cmd(q)
        d = dc.cmd(q)
        if t != d:
            diffs.append(f"{q}:\n  tern:    {t!r}\n  dovecot: {d!r}")
    for q in SEARCHES:
        if q in SEARCH_DIFFERS:
            continue
        t = tc.cmd(f"SEARCH {q}")
        d = dc.cmd(f"SEARCH {q}")
        if t != d:
            diffs.append(f"SEARCH {q}:\n  tern:    {t!r}\n  dovecot: {d!r}")
    assert not diffs, f"{len(diffs)} differences:\n" + "\n".join(diffs)
