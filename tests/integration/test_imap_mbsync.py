"""mbsync (isync) against a real ternd over IMAPS with the test's self-signed
certificate (CertificateFile): a whole account synchronised both ways (a
few folders, messages, flags), then both sides changed and synchronised
again, on the local and the postgres backends. Checked on the server over
IMAP and on the client's Maildir. Skipped when mbsync is not installed.
"""

import os
import re
import shutil
import ssl
import subprocess
import uuid

import pytest

from conftest import SLOW, _openssl, free_ports
from test_imap import PASSWORD, USER, _pg_conninfo, ctl

MBSYNC = shutil.which("mbsync")
pytestmark = pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) is not installed")


@pytest.fixture(params=["local", "pg"])
def imap(request, tern_factory, tmp_path):
    """ternd with IMAPS under a self-signed certificate for 127.0.0.1, the
    name mbsync checks against the host it connects to."""
    key, crt = tmp_path / "ip.key", tmp_path / "ip.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-sha256",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1",
             "-keyout", str(key), "-out", str(crt))
    ports = free_ports(2)
    t = tern_factory({"listeners": None}, start=False)
    cfg = t.config
    cfg["tls"]["certificates"]["main"] = {"cert": str(crt), "key": str(key), "default": True}
    cfg["listeners"] = [
        {"name": "mx", "protocol": "smtp", "address": "127.0.0.1", "port": ports[0],
         "tls": "starttls"},
        {"name": "imaps", "protocol": "imap", "address": "127.0.0.1", "port": ports[1],
         "tls": "implicit"},
    ]
    if request.param == "pg":
        cfg["storage"] = {"backend": "postgres"}
        cfg["postgres"] = {"conninfo": _pg_conninfo()}
    t.write_config()
    ctl(t, "account", "add", USER, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    t.start()
    t.ip_cert = crt
    return t


def login(t):
    import imaplib
    ctx = ssl.create_default_context(cafile=str(t.ip_cert))
    c = imaplib.IMAP4_SSL("127.0.0.1", t.port("imaps"), ssl_context=ctx, timeout=10 * SLOW)
    c.login(USER, PASSWORD)
    return c


def message(subject):
    return (f"From: Bob <bob@example.test>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n"
            f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n{subject} body\r\n").encode()


def write_conf(t, d):
    local = d / "mail"
    local.mkdir()
    conf = d / "mbsyncrc"
    conf.write_text(f"""IMAPAccount tern
Host 127.0.0.1
Port {t.port("imaps")}
User {USER}
Pass "{PASSWORD}"
SSLType IMAPS
CertificateFile {t.ip_cert}
Timeout {int(20 * SLOW)}

IMAPStore remote
Account tern

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
""")
    return conf, local


def run_mbsync(conf):
    p = subprocess.run([MBSYNC, "-c", str(conf), "-a"], capture_output=True, text=True,
                       timeout=120 * SLOW)
    assert p.returncode == 0, (p.stdout, p.stderr)
    return p


def maildir(box):
    """{subject: flags} of a Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for name in os.listdir(box / sub):
            data = (box / sub / name).read_bytes()
            m = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
            flags = name.split(":2,")[1] if ":2," in name else ""
            out[m.group(1).decode()] = flags
    return out


def server(c, box):
    """{subject: set of flags} of a mailbox on the server."""
    typ, _ = c.select(f'"{box}"')
    assert typ == "OK", box
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    out = {}
    if data == [None]:
        return out
    for item in data:
        if not isinstance(item, tuple):
            continue
        flags = set(re.search(rb"FLAGS \((.*?)\)", item[0]).group(1).decode().split())
        subj = re.search(rb"Subject: (.*?)\r\n", item[1]).group(1).decode()
        out[subj] = flags
    return out


def test_mbsync_both_ways(imap, tmp_path):
    c = login(imap)
    for box in ("Work", "Work/Sub"):
        assert c.create(box)[0] == "OK"
    for box, subj, flags in (("INBOX", "in-1", "(\\Seen)"), ("INBOX", "in-2", "(\\Flagged)"),
                             ("INBOX", "in-3", None), ("Work", "work-1", None),
                             ("Work", "work-2", "(\\Seen \\Answered)"),
                             ("Work/Sub", "sub-1", None)):
        assert c.append(box, flags, None, message(subj))[0] == "OK"
    conf, local = write_conf(imap, tmp_path)
    # a folder that exists only on the client
    for sub in ("cur", "new", "tmp"):
        (local / "Local" / sub).mkdir(parents=True)
    (local / "Local" / "new" / "1700000000.1.host").write_bytes(message("local-1"))

    run_mbsync(conf)
    assert maildir(local / "INBOX") == {"in-1": "S", "in-2": "F", "in-3": ""}
    assert maildir(local / "Work") == {"work-1": "", "work-2": "RS"}
    assert maildir(local / "Work" / "Sub") == {"sub-1": ""}
    assert set(server(c, "Local")) == {"local-1"}

    # change both sides
    assert c.append("Work", None, None, message("work-3"))[0] == "OK"
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", "in-3")
    assert c.store(data[0].decode(), "+FLAGS", "(\\Answered)")[0] == "OK"
    for name in os.listdir(local / "INBOX" / "cur"):
        data = (local / "INBOX" / "cur" / name).read_bytes()
        if b"Subject: in-1" in data:
            os.unlink(local / "INBOX" / "cur" / name)  # deleted on the client
    for sub in ("cur", "new"):
        for name in os.listdir(local / "Work" / sub):
            data = (local / "Work" / sub / name).read_bytes()
            if b"Subject: work-1" in data:
                base = name.split(":2,")[0]
                os.rename(local / "Work" / sub / name, local / "Work" / "cur" / (base + ":2,FS"))
    (local / "Local" / "new" / "1700000001.2.host").write_bytes(message("local-2"))

    run_mbsync(conf)
    assert server(c, "INBOX") == {"in-2": {"\\Flagged"}, "in-3": {"\\Answered"}}
    assert server(c, "Work") == {"work-1": {"\\Seen", "\\Flagged"},
                                 "work-2": {"\\Seen", "\\Answered"}, "work-3": set()}
    assert set(server(c, "Local")) == {"local-1", "local-2"}
    assert maildir(local / "INBOX") == {"in-2": "F", "in-3": "R"}
    assert maildir(local / "Work") == {"work-1": "FS", "work-2": "RS", "work-3": ""}

    # a third run has nothing left to do and changes nothing
    run_mbsync(conf)
    assert server(c, "Work")["work-1"] == {"\\Seen", "\\Flagged"}
    assert maildir(local / "Work" / "Sub") == {"sub-1": ""}
    c.logout()
